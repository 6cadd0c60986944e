"""prune-experts: slicing, the router rewrite (checked against the unpruned model with dropped experts barred),
budgets and planning from the config alone, merging, and compiled == interpreted after pruning."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lfmc.compile import compile_model, plan_weights
from lfmc.frontend import import_preset
from lfmc.ir.errors import LfmcError
from lfmc.ir.interp import Interpreter
from lfmc.ir.model import Model
from lfmc.ir.text import parse_graph, print_graph
from lfmc.ir.verify import verify
from lfmc.passes import run_pipeline
from lfmc.passes.prune_experts import plan_counts, prune_experts, weight_bytes
from lfmc.targets.profiles import get_profile


@pytest.fixture(scope="module")
def moe():
    return import_preset("lfm2-moe-tiny", weights=True, seed=5, std=0.25)


def _moes(m: Model):
    return [n for n in m.graph.nodes if n.op == "moe"]


def test_keep_k_slices_experts_router_and_bias(moe):
    p = prune_experts.run(moe, {"experts_keep": 3})
    verify(p.graph)
    for n0, n in zip(_moes(moe), _moes(p)):
        kept = n.attrs["pruned"]["kept"]
        assert n.attrs["num_experts"] == 3 and len(kept) == 3 and n.attrs["pruned"]["of"] == 8
        assert n.attrs["pruned"]["select"] == "router" and "experts_keep 3" in n.attrs["pruned"]["why"]
        for role in ("router", "gate_up", "down", "expert_bias"):
            np.testing.assert_array_equal(p.weights[n.params[role].name], moe.weights[n0.params[role].name][kept])
            assert n.params[role].type.shape[0] == 3
    assert moe.graph.nodes[0] is not p.graph.nodes[0]              # the input model is untouched
    assert all(n.attrs["num_experts"] == 8 for n in _moes(moe))
    text = print_graph(p.graph)
    assert "pruned = {" in text
    assert print_graph(parse_graph(text)) == text                   # the record survives the text form


def test_pruned_model_routes_like_the_full_one_with_dropped_experts_barred(moe):
    """Sigmoid routing is per expert, so keeping K experts equals the full model whose dropped experts can never
    be chosen (expert bias -1e9): the pruned interpreter must match that reference exactly (to float noise)."""
    p = prune_experts.run(moe, {"experts_keep": 4})
    w = dict(moe.weights)
    for n0, n in zip(_moes(moe), _moes(p)):
        bias = w[n0.params["expert_bias"].name].copy()
        dropped = sorted(set(range(8)) - set(n.attrs["pruned"]["kept"]))
        bias[dropped] = -1e9
        w[n0.params["expert_bias"].name] = bias
    ref = Interpreter(moe.graph, w)
    got = Interpreter(p.graph, p.weights)
    toks = np.random.default_rng(0).integers(0, 256, 12)
    a, b = ref.run(toks, ref.new_state()), got.run(toks, got.new_state())
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    full = Interpreter(moe.graph, moe.weights).run(toks, ref.new_state())
    assert np.abs(full - a).max() > 1e-3                           # pruning does change the model


def test_compiled_pruned_model_equals_the_interpreted_one(moe, tmp_path):
    from lfmc.runtime import Engine
    from tests.helpers import assert_follows_interpreter

    opts = {"experts_keep": 3, "select": "random", "seed": 1}
    art = compile_model(moe, tmp_path / "art", prefill_chunk=8, prune=opts)
    man = json.loads((art / "manifest.json").read_text())
    assert all(v["of"] == 8 and len(v["kept"]) == 3 for v in man["prune"]["layers"].values())
    p = run_pipeline(moe, None, opts)
    it = Interpreter(p.graph, p.weights)
    eng = Engine(art)
    rng = np.random.default_rng(2)
    for plen in (1, 8, 13):
        assert_follows_interpreter(it, eng, rng.integers(0, 256, plen).tolist(), steps=6, where=(plen,))


def test_budget_picks_the_largest_k_that_fits_and_refuses_the_impossible(moe):
    g = moe.graph
    full = sum(weight_bytes(g).values())
    n = _moes(moe)[0]
    per = sum(weight_bytes(g).values()) - sum(weight_bytes(prune_experts.run(moe, {"experts_keep": 7}).graph).values())
    per /= len(_moes(moe))
    counts = plan_counts(g, full - 2.5 * per * len(_moes(moe)))
    assert set(counts.values()) == {5}                              # 8 - ceil(2.5)
    p = prune_experts.run(moe, {"max_weight_bytes": full - 2.5 * per * len(_moes(moe))})
    assert sum(weight_bytes(p.graph).values()) <= full - 2.5 * per * len(_moes(moe))
    assert "weight budget" in _moes(p)[0].attrs["pruned"]["why"]
    least = full - (8 - n.attrs["top_k"]) * per * len(_moes(moe))
    with pytest.raises(LfmcError, match="cannot fit .* even pruned to top_k"):
        plan_counts(g, least * 0.99)
    with pytest.raises(LfmcError, match="cannot keep 1 experts"):
        prune_experts.run(moe, {"experts_keep": 1})
    assert plan_counts(g, full * 10) == {n.name: 8 for n in _moes(moe)}
    for k in (2, 3, 5):        # the bytes of a model pruned to k per layer plan back to exactly k
        b = sum(weight_bytes(prune_experts.run(moe, {"experts_keep": k}).graph).values())
        assert set(plan_counts(g, b).values()) == {k}
    skewed = {n.name: {"mass": [0.9] + [0.1 / 7] * 7} if i == 0 else {"mass": [1 / 8] * 8}
              for i, n in enumerate(_moes(moe))}
    b = sum(weight_bytes(prune_experts.run(moe, {"experts_keep": 4}).graph).values())
    counts = plan_counts(g, b, calibration=skewed)
    first = _moes(moe)[0].name
    assert sum(counts.values()) == 4 * len(counts) and counts[first] < max(counts.values())


def test_merge_folds_dropped_experts_into_the_most_similar_kept_one(moe):
    p = prune_experts.run(moe, {"experts_keep": 7, "merge": True})
    for n0, n in zip(_moes(moe), _moes(p)):
        kept = n.attrs["pruned"]["kept"]
        (d,) = sorted(set(range(8)) - set(kept))
        gu = moe.weights[n0.params["gate_up"].name].reshape(8, -1)
        unit = gu / np.linalg.norm(gu, axis=1, keepdims=True)
        target = kept[int(np.argmax(unit[kept] @ unit[d]))]
        merged = p.weights[n.params["gate_up"].name][kept.index(target)]
        want = (moe.weights[n0.params["gate_up"].name][target] + moe.weights[n0.params["gate_up"].name][d]) / 2
        np.testing.assert_allclose(merged, want, rtol=1e-6)
        assert n.attrs["pruned"]["merged"] is True


def test_plan_only_from_the_config_alone():
    """lfm2-8b-a1b (33 GB in float32: more than this machine's memory) planned for an iPhone without weights."""
    from lfmc.frontend import import_source

    m = import_source("lfm2-8b-a1b")
    assert m.weights is None
    prof = get_profile("iphone")
    r = plan_weights(m, prof, prof.quant)
    assert not r["fits"] and r["weight_bytes"] > prof.weight_budget_gb * 1e9
    assert r["pruned"]["fits"] and top_k_ok(r)
    k = set(r["pruned"]["experts"].values())
    assert len(k) == 1 and r["top_k"] <= k.pop() < 32
    r2 = plan_weights(m, prof, prof.quant, prune={"experts_keep": 8})
    assert set(r2["pruned"]["experts"].values()) == {8}
    with pytest.raises(LfmcError, match="even pruned to top_k"):
        plan_weights(m, prof, None, prune={"max_weight_bytes": 1e9})


def top_k_ok(r) -> bool:
    return all(v >= r["top_k"] for v in r["pruned"]["experts"].values())


def test_cli_plan_only_and_over_budget_compile(tmp_path, capsys):
    from lfmc.cli import main

    assert main(["compile", "lfm2-8b-a1b", "--target", "iphone", "--plan-only"]) == 0
    out = capsys.readouterr().out
    assert "does NOT fit" in out and "with expert pruning:" in out and "of 32 experts per MoE layer" in out
    assert main(["compile", "lfm2-8b-a1b", "--target", "iphone", "--plan-only", "--max-weight-bytes", "1GB",
                 "--quant", "none"]) == 2
    assert "even pruned to top_k" in capsys.readouterr().err
    from lfmc.frontend import import_source

    base = get_profile("snapdragon-8gen3:cpu")
    r = plan_weights(import_source("lfm2-moe-tiny"), base, base.quant, prune={"experts_keep": 2})
    budget = (r["weight_bytes"] + r["pruned"]["weight_bytes"]) / 2 / 1e9     # between the full and top-k sizes
    prof = tmp_path / "p.toml"
    prof.write_text(f'[tiny-board]\nbase = "snapdragon-8gen3:cpu"\nweight_budget_gb = {budget!r}\n')
    assert main(["compile", "lfm2-moe-tiny", "--target", "tiny-board", "--profiles", str(prof), "-o",
                 str(tmp_path / "a"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "over tiny-board's weight budget" in err and "--fit" in err
    assert not (tmp_path / "a").exists()
    assert main(["compile", "lfm2-moe-tiny", "--target", "tiny-board", "--profiles", str(prof), "-o",
                 str(tmp_path / "a"), "-q", "--fit"]) == 0
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert all(len(v["kept"]) < 8 for v in man["prune"]["layers"].values())


def test_show_says_what_was_pruned_and_why(moe, tmp_path, capsys):
    from lfmc.cli import main
    from lfmc.ir.model import save_model

    save_model(prune_experts.run(moe, {"experts_keep": 5}), tmp_path / "p.lfm")
    assert main(["show", str(tmp_path / "p.lfm")]) == 0
    out = capsys.readouterr().out
    assert out.count("kept 5 of 8 experts") == len(_moes(moe)) and "by router: experts_keep 5" in out


def test_calibration_statistics_and_selection_by_them(moe, tmp_path, capsys):
    from lfmc.cli import main
    from lfmc.ir.model import save_model
    from lfmc.passes.calibrate import calibrate, load_calibration, text_tokens

    text = "The quick brown fox jumps over the lazy dog. " * 20
    toks = text_tokens(moe, text)
    assert len(toks) == len(text.encode())
    r = calibrate(moe, toks, seq_len=64)
    assert r["tokens"] == len(toks) and set(r["layers"]) == {n.name for n in _moes(moe)}
    for n in _moes(moe):
        st = r["layers"][n.name]
        assert abs(sum(st["frequency"]) - n.attrs["top_k"]) < 1e-9        # every token picks top_k experts
        assert abs(sum(st["mass"]) - n.attrs["routed_scaling_factor"]) < 1e-4   # normalized weights
        assert min(st["output_norm"]) >= 0 and max(st["output_norm"]) > 0
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps(r))
    layers = load_calibration(cal, moe)
    p = prune_experts.run(moe, {"experts_keep": 3, "calibration": layers, "select": "frequency"})
    for n in _moes(p):
        want = sorted(np.argsort(-np.asarray(layers[n.name]["frequency"]), kind="stable")[:3].tolist())
        assert n.attrs["pruned"]["kept"] == want and n.attrs["pruned"]["select"] == "frequency"
    # the CLI: calibrate a saved model from a text file, compile with the statistics
    save_model(moe, tmp_path / "m.lfm")
    (tmp_path / "data.txt").write_text(text)
    assert main(["calibrate", str(tmp_path / "m.lfm"), "--data", str(tmp_path / "data.txt"), "-o",
                 str(tmp_path / "c2.json"), "-q"]) == 0
    assert "busiest expert" in capsys.readouterr().out
    c2 = json.loads((tmp_path / "c2.json").read_text())
    assert c2["tokens"] == len(toks) and set(c2["layers"]) == set(r["layers"])
    bad = dict(r, layers={k: {**v, "mass": v["mass"][:-1]} for k, v in r["layers"].items()})
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(LfmcError, match="mass has 7 experts"):
        load_calibration(tmp_path / "bad.json", moe)
    (tmp_path / "junk.json").write_text("[1, 2")
    with pytest.raises(LfmcError, match="not a calibration file"):
        load_calibration(tmp_path / "junk.json")
