"""fuse-post-norm: LFM3's sandwich norms computed inside their residual adds (one kernel, the normalized rows never
written), where fuse-residual cannot reach; the annotation is checked; the compiled plan launches one kernel for
norm + add."""
from __future__ import annotations

import json

import pytest

from lfmc.compile import compile_model
from lfmc.ir import VerifyError, parse_graph, print_graph, verify
from lfmc.passes.pipeline import default_passes, run_pipeline


def test_marks_each_sandwich_norm_once(lfm3_models, tiny_models):
    m = lfm3_models["lfm3-a"]
    assert "fuse-post-norm" in default_passes()
    g = run_pipeline(m, default_passes()).graph
    by = {n.name: n for n in g.nodes}
    post = [n for n in g.nodes if n.op == "rmsnorm" and "post" in n.fused]
    assert len(post) == 2 * 8                                       # post_operator_norm and post_ffn_norm per layer
    for n in post:
        assert by[n.fused["post"]].op == "add" and not by[n.fused["post"]].fused
    text = print_graph(g)
    assert print_graph(parse_graph(text)) == text
    # LFM2 has no post-norms: nothing marked
    g2 = run_pipeline(tiny_models["dense-a"], default_passes()).graph
    assert not any("post" in n.fused for n in g2.nodes)


def test_bad_annotation_is_refused(lfm3_models):
    g = run_pipeline(lfm3_models["lfm3-a"], ["fuse-post-norm"]).graph
    text = print_graph(g)
    n = next(n for n in g.nodes if "post" in n.fused)
    other = next(x for x in g.nodes if x.op == "add" and x.name != n.fused["post"])
    with pytest.raises(VerifyError, match="must be a residual add and its only user"):
        verify(parse_graph(text.replace(f'post = "{n.fused["post"]}"', f'post = "{other.name}"', 1)))


def test_plan_launches_one_kernel_per_norm_and_add(lfm3_models, tmp_path):
    m = lfm3_models["lfm3-a"]
    art = compile_model(m, tmp_path / "a", max_batch=1, max_context=64, prefill_chunk=8)
    man = json.loads((art / "manifest.json").read_text())
    names = [L["kernel"] for L in man["plan"]["entries"]["decode"]]
    assert sum(k.startswith("k_add_rmsnorm") for k in names) == 2 * 8
    assert sum(k.startswith("k_rmsnorm") for k in names) == 1       # the final norm; pre-norms folded, post in adds
    art2 = compile_model(m, tmp_path / "b", max_batch=1, max_context=64, prefill_chunk=8,
                         passes="dce,fuse-norm,fuse-swiglu,fuse-rope,fuse-residual")
    names2 = [L["kernel"] for L in json.loads((art2 / "manifest.json").read_text())["plan"]["entries"]["decode"]]
    assert len(names2) - len(names) == 2 * 8                        # without it: a norm kernel and an add each
