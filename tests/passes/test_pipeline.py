"""The pass pipeline: each pass keeps the IR valid and the numbers unchanged; fusion cuts kernels per layer."""
from __future__ import annotations

import numpy as np
import pytest

from lfmc.ir import Interpreter, LfmcError, VerifyError, parse_graph, print_graph, verify
from lfmc.passes import REGISTRY, default_passes, describe, resolve, run_pipeline
from lfmc.targets.host import host_knobs
from lfmc.targets.lower import kernels_per_layer, lower

from tests.configs import ALL_CONFIGS

KNOBS = {e: host_knobs(e) for e in ("prefill", "decode")}


@pytest.mark.parametrize("name", sorted(ALL_CONFIGS))
def test_every_pass_verifies_and_keeps_logits(name, tiny_models):
    m = tiny_models[name]
    toks = np.arange(9) % 50
    ref = Interpreter(m.graph, m.weights).run(toks)
    for p in default_passes():
        out = run_pipeline(m, [p])
        verify(out.graph)
        text = print_graph(out.graph)
        assert print_graph(parse_graph(text)) == text            # fusion annotations round-trip
        np.testing.assert_array_equal(Interpreter(out.graph, out.weights).run(toks), ref)


def test_fusion_before_after_ir(tiny_models):
    m = tiny_models["dense-a"]
    before = print_graph(m.graph)
    after = print_graph(run_pipeline(m).graph)
    assert "fused" not in before
    # the first layer: operator norm folded into the conv's in_proj, residual add into its out_proj,
    # ffn norm into the SwiGLU projection, SwiGLU fused, the second add into w2
    lines = {ln.split(" : ")[0].strip(): ln for ln in after.splitlines() if ln.strip().startswith("%")}
    assert 'fused {into = "2"}' in lines["%1"] and lines["%1"].split(" = ")[1].startswith("rmsnorm")
    assert 'fused {into = "2"}' in lines["%3"] and "= add(%2, %0)" in lines["%3"]
    assert 'fused {into = "5"}' in lines["%4"]
    assert "fused {swiglu = true}" in lines["%5"]
    assert 'fused {into = "5"}' in lines["%6"]
    attn = next(ln for ln in lines.values() if " = attention(" in ln)
    assert "rope = true" in attn                             # QK-norm + RoPE inside the attention kernel
    assert "fused" not in lines["%37"]                       # the final norm feeds the (tied) LM head: kept


def test_kernel_counts_per_layer(tiny_models):
    m = tiny_models["dense-a"]
    before = kernels_per_layer(lower(m.graph, None, KNOBS).plan, m.graph)
    fused = run_pipeline(m)
    after = kernels_per_layer(lower(fused.graph, None, KNOBS).plan, fused.graph)
    kinds = {f"layer {i}": t for i, t in enumerate(ALL_CONFIGS["dense-a"]["layer_types"])}
    for layer, kind in kinds.items():
        # conv: norm, in_proj, conv, out_proj, add | norm, w13, silu*mul, w2, add  ->  in_proj, conv, out_proj | w13, w2
        # attention: norm, qkv, qk-norm+rope, attention, out_proj, add | ffn as above  ->  qkv, attn, out | w13, w2
        assert (before[layer], after[layer]) == ((10, 5) if kind == "conv" else (11, 5)), layer


def test_bad_fusion_annotations_are_refused(tiny_models):
    g = run_pipeline(tiny_models["dense-a"]).graph
    text = print_graph(g)
    with pytest.raises(VerifyError, match="fused into %7"):
        verify(parse_graph(text.replace('fused {into = "2"}', 'fused {into = "7"}', 1)))
    with pytest.raises(VerifyError, match="unknown fusion annotation"):
        verify(parse_graph(text.replace("fused {swiglu = true}", "fused {turbo = true}", 1)))
    with pytest.raises(VerifyError, match="rope must be true or false"):
        verify(parse_graph(text.replace("rope = true", "rope = 3", 1)))


def test_pass_lists():
    assert resolve(None) == default_passes()
    assert resolve("") == []
    assert resolve("dce,fuse-norm") == ["dce", "fuse-norm"]
    with pytest.raises(LfmcError, match="unknown pass"):
        resolve("fuse-everything")
    assert {n for _, n, _ in describe()} == set(REGISTRY)
    assert all(doc for _, _, doc in describe())


def test_dce_and_dump(tmp_path, tiny_models):
    m = tiny_models["moe-b"]
    g = m.graph
    import copy

    m2 = copy.deepcopy(m)
    dead = copy.deepcopy(g.nodes[4])                          # an unused copy of a node
    dead.name = "dead"
    m2.graph.nodes.insert(5, dead)
    verify(m2.graph)
    out = run_pipeline(m2, ["dce"], dump_dir=tmp_path)
    assert "dead" not in {n.name for n in out.graph.nodes}
    assert sorted(p.name for p in tmp_path.iterdir())[:3] == ["00-input.lfmir", "01-canonicalize.lfmir",
                                                               "02-fuse.lfmir"]
    assert "%dead" in (tmp_path / "00-input.lfmir").read_text()
    assert "%dead" not in (tmp_path / "01-canonicalize.lfmir").read_text()


def test_kernel_counts_hybrid_recurrence_layers():
    from lfmc.frontend import import_preset

    m = import_preset("lfm2-hybrid-tiny", weights=True, std=0.1)
    before = kernels_per_layer(lower(m.graph, None, KNOBS).plan, m.graph)
    fused = run_pipeline(m)
    after = kernels_per_layer(lower(fused.graph, None, KNOBS).plan, fused.graph)
    kinds = m.provenance["config"]["layer_types"]
    dense = m.provenance["config"]["num_dense_layers"]
    for i, kind in enumerate(kinds):
        # the MoE FFN (norm, router, route, gate/up, silu*mul, down, add) keeps its norm; the add joins the down
        ffn = (5, 2) if i < dense else (7, 6)
        op = {"conv": (5, 3), "recurrence": (5, 3), "full_attention": (6, 3)}[kind]
        assert (before[f"layer {i}"], after[f"layer {i}"]) == (op[0] + ffn[0], op[1] + ffn[1]), (i, kind)
