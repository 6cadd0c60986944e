"""The wafer driver: compiled tiny models run through lfmc's mesh simulator generate what the interpreter
generates (prefill, decode after prefill, batched decode); no link ever carries more than a word per cycle;
the cycle estimate is never below the bounds it is checked against."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lfmc.compile import compile_model, wafer_estimate
from lfmc.ir import Interpreter
from lfmc.runtime import Engine, EngineError, RuntimeLoadError
from lfmc.runtime.drivers.wafer import MeshSim, load_program
from lfmc.runtime.verify import verify_artifact
from lfmc.targets.backend import backend_named

from tests.helpers import assert_follows_interpreter, interpreter_greedy

MODELS = ["dense-a", "dense-b", "dense-c", "moe-a", "moe-b", "moe-c"]


@pytest.fixture(scope="module")
def wafer_arts(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("wafer")
    return {n: compile_model(tiny_models[n], root / n, "wafer-small", max_batch=3, max_context=64)
            for n in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_generation_equals_interpreter(wafer_arts, tiny_models, name):
    m = tiny_models[name]
    it = Interpreter(m.graph, m.weights)
    eng = Engine(wafer_arts[name])
    assert eng.driver.name == "wafer"
    prompt = [3, 17, 200, 45, 9]
    want = interpreter_greedy(it, prompt, 16)
    assert len(set(want)) > 2                  # the check must be able to fail
    assert eng.generate(prompt, 16, stop=[]).tokens == want
    for p in ([7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]):
        assert_follows_interpreter(it, eng, p, 16, rtol=2e-4, where=(name, len(p)))


def test_batched_decode_equals_interpreter(wafer_arts, tiny_models):
    m = tiny_models["moe-a"]
    it = Interpreter(m.graph, m.weights)
    eng = Engine(wafer_arts["moe-a"])
    prompts = [[5, 6, 7], [100, 3], [42, 42, 42, 42, 1]]
    seqs, states, ref = [], [], []
    for p in prompts:
        seqs.append(eng.new_sequence())
        states.append(it.new_state())
        ref.append(it.run(p, states[-1])[-1])
        got = eng.prefill(seqs[-1], p)
        assert np.abs(got - ref[-1]).max() <= 2e-4 * max(1.0, np.abs(ref[-1]).max())
    for _ in range(6):
        toks = [int(r.argmax()) for r in ref]
        got = eng.decode(seqs, toks)
        ref = [it.run([t], s)[-1] for t, s in zip(toks, states)]
        for g, r in zip(got, ref):
            assert np.abs(g - r).max() <= 2e-4 * max(1.0, np.abs(r).max())


def test_links_never_exceed_a_word_per_cycle(wafer_arts):
    prog = load_program(wafer_arts["dense-a"] / "mesh.json")
    sim = MeshSim(prog, None, trace=True)
    sim.step("prefill", list(range(1, 12)), [0], [0])
    sim.step("decode", [4, 5, 6], [0, 1, 2], [11, 0, 0])
    sim.step("decode", [4, 5, 6], [0, 1, 2], [12, 1, 1])
    chk = sim.link_check()
    assert chk["transfers"] > 100 and chk["links_used"] > 50
    assert chk["max_words_per_cycle"] <= 1.0
    assert chk["overlapping_reservations"] == 0


def test_link_check_catches_an_overload(wafer_arts):
    prog = load_program(wafer_arts["dense-a"] / "mesh.json")
    sim = MeshSim(prog, None, trace=True)
    sim.step("decode", [4], [0], [0])
    t0, t1, x0, y0, loads = next(t for t in sim.trace if t[4].max() > 0)
    sim.trace.append((t0, t0 + 1, x0, y0, loads * 0 + (loads > 0) * 5.0))    # 5 words in one cycle, overlapping
    chk = sim.link_check()
    assert chk["max_words_per_cycle"] > 1 and chk["overlapping_reservations"] > 0


@pytest.mark.parametrize("source", ["tiny", "lfm2-350m"])
def test_estimate_respects_its_bounds(wafer_arts, source):
    if source == "tiny":
        prog = load_program(wafer_arts["moe-b"] / "mesh.json")
    else:
        from lfmc.frontend import import_source
        from lfmc.passes import run_pipeline
        from lfmc.targets.profiles import get_profile
        from lfmc.targets.wafer import lower_wafer

        m = run_pipeline(import_source(source), None, {}, without=backend_named("wafer").without_passes)
        prog, _, _ = lower_wafer(m.graph, None, get_profile("wafer-wse2"), 4, 4096)
    est = wafer_estimate(prog, 3)
    b = est["bounds"]
    assert est["cycles"] >= max(b["sram_bandwidth_cycles"], b["busiest_pe_cycles"], b["busiest_link_words"])
    assert est["batch_tokens_per_s"] > est["tokens_per_s"]          # sequences pipeline through the layers
    assert abs(sum(est["breakdown"].values()) - est["cycles"]) <= 0.01 * est["cycles"] + 1
    longer = wafer_estimate(prog, 1, context=60)
    assert longer["cycles"] > wafer_estimate(prog, 1, context=1)["cycles"]   # attention grows with the context


def test_limits_and_tampering(wafer_arts, tmp_path):
    import shutil

    eng = Engine(wafer_arts["dense-c"])
    s = eng.new_sequence()
    with pytest.raises(EngineError, match="max context"):
        eng.prefill(s, [1] * 65)
    with pytest.raises(EngineError, match="slot 5 outside the 3 slots"):
        eng.driver.sim.step("decode", [1], [5], [0]) if eng.driver.sim else MeshSim(
            load_program(wafer_arts["dense-c"] / "mesh.json"), None).step("decode", [1], [5], [0])
    info = verify_artifact(wafer_arts["dense-c"])
    assert info["driver"] == "wafer" and "mesh program (simulated)" in info["library_kinds"]
    assert any(f.startswith("csl/") for f in json.loads((wafer_arts["dense-c"] / "manifest.json").read_text())["files"])
    bad = tmp_path / "bad"
    shutil.copytree(wafer_arts["dense-c"], bad)
    (bad / "mesh.json").write_text((bad / "mesh.json").read_text().replace('"gemv"', '"gemm"', 1))
    with pytest.raises(RuntimeLoadError, match="mesh.json was altered"):
        Engine(bad)


def test_cli_compile_plot_run_and_plan_only(tmp_path):
    art = tmp_path / "w"
    r = subprocess.run([sys.executable, "-m", "lfmc", "compile", "lfm2-moe-tiny", "--target", "wafer-small",
                        "--max-batch", "2", "--max-context", "32", "--plot", "-o", str(art)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "placed on wafer-small" in r.stdout and "critical path" in r.stdout and "assumptions" in r.stdout
    for png in ("placement.png", "decode-timeline.png"):
        assert (art / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = subprocess.run([sys.executable, "-m", "lfmc", "run", str(art), "--tokens", "1 2 3", "--max-new-tokens", "4",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["tokens"]) == 4
    r = subprocess.run([sys.executable, "-m", "lfmc", "compile", "lfm2-350m", "--target", "wafer-wse2", "--plan-only",
                        "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["placement"]["max_pe_bytes"] <= d["placement"]["pe_capacity"] and d["tokens_per_s"] > 0


def test_hybrid_recurrence_model_equals_interpreter(tmp_path):
    from lfmc.frontend import import_preset

    m = import_preset("lfm2-hybrid-tiny", weights=True, seed=3, std=0.25)
    it = Interpreter(m.graph, m.weights)
    assert any(n.op == "linear_recurrence" for n in m.graph.nodes)
    eng = Engine(compile_model(m, tmp_path / "h", "wafer-small", max_batch=2, max_context=48))
    want = interpreter_greedy(it, [9, 8, 7, 6], 16)
    assert len(set(want)) > 2
    assert eng.generate([9, 8, 7, 6], 16, stop=[]).tokens == want
    assert_follows_interpreter(it, eng, [200, 1, 5], 12, rtol=2e-4)
