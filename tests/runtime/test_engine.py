"""Compiled host artifacts against transformers and the interpreter: greedy generation, logits per step,
interleaved sequences, bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lfmc.compile import compile_model
from lfmc.frontend.reference import build_hf_model
from lfmc.ir import Interpreter
from lfmc.runtime import Engine, EngineError, RuntimeLoadError

from tests.helpers import assert_follows_interpreter

GEN_MODELS = ["dense-a", "dense-b", "dense-c", "moe-a", "moe-b"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("art")
    out = {}
    for name in GEN_MODELS:
        # a small prefill chunk makes longer prompts exercise chunked prefill
        out[name] = compile_model(tiny_models[name], root / name, max_batch=4, max_context=256, prefill_chunk=16)
    return out


def _hf_greedy(model, prompt, n):
    import torch

    model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, min_new_tokens=n,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("name", GEN_MODELS)
def test_greedy_tokens_equal_transformers_generate(name, tiny_models, artifacts):
    m = tiny_models[name]
    hf = build_hf_model(m.provenance["config"], m.weights)
    eng = Engine(artifacts[name])
    for plen in (5, 37):
        prompt = np.random.default_rng(plen).integers(0, m.provenance["config"]["vocab_size"], plen).tolist()
        want = _hf_greedy(hf, prompt, 32)
        got = eng.generate(prompt, max_new_tokens=32, stop=[]).tokens
        assert got == want, f"{name} prompt {plen}"


@pytest.mark.parametrize("name", GEN_MODELS)
def test_logits_each_step_match_interpreter(name, tiny_models, artifacts):
    m = tiny_models[name]
    it = Interpreter(m.graph, m.weights)
    eng = Engine(artifacts[name])
    for plen in (1, 7, 40):
        prompt = np.random.default_rng(100 + plen).integers(0, m.provenance["config"]["vocab_size"], plen)
        assert_follows_interpreter(it, eng, prompt, 12, where=(name, "prefill", plen))


def test_interleaved_sequences_equal_each_alone(tiny_models, artifacts):
    eng = Engine(artifacts["moe-a"])
    prompts = [[5, 6, 7, 8, 9], list(range(20, 53)), [200]]

    def alone(p):
        return eng.generate(p, max_new_tokens=10, stop=[]).tokens

    solo = [alone(p) for p in prompts]
    seqs = [eng.new_sequence() for _ in prompts]
    toks = [[int(np.argmax(eng.prefill(s, p)))] for s, p in zip(seqs, prompts)]
    # stagger: the third sequence starts decoding late, the first stops early
    for step in range(9):
        active = [i for i in range(3) if not (i == 2 and step < 3)]
        logits = eng.decode([seqs[i] for i in active], [toks[i][-1] for i in active])
        for i, lg in zip(active, logits):
            toks[i].append(int(np.argmax(lg)))
    for i in (0, 1):
        assert toks[i] == solo[i]
    assert toks[2] == solo[2][:7]


def test_reset_and_slots(artifacts):
    eng = Engine(artifacts["dense-a"])
    s = eng.new_sequence()
    a = eng.prefill(s, [1, 2, 3])
    eng.prefill(s, [4, 5])
    eng.reset(s)
    assert eng.length(s) == 0
    np.testing.assert_array_equal(eng.prefill(s, [1, 2, 3]), a)
    others = [eng.new_sequence() for _ in range(3)]
    with pytest.raises(EngineError, match="all 4 sequence slots"):
        eng.new_sequence()
    eng.release(others[0])
    eng.new_sequence()


def test_prompt_too_long_and_bad_tokens(artifacts):
    eng = Engine(artifacts["dense-a"], max_context=64)
    with pytest.raises(EngineError, match="max context 64"):
        eng.generate(list(range(60)), max_new_tokens=10)
    s = eng.new_sequence()
    with pytest.raises(EngineError, match="max context 64"):
        eng.prefill(s, [1] * 65)
    with pytest.raises(EngineError, match=r"token ids must lie in \[0, 256\)"):
        eng.prefill(s, [256])
    with pytest.raises(EngineError, match="exceeds max_batch"):
        eng.decode(list(range(5)), [1] * 5)
    assert eng.length(s) == 0                              # refused calls change nothing


def test_bad_artifacts(tmp_path, artifacts):
    src = artifacts["dense-c"]
    def fresh(name):
        d = tmp_path / name
        shutil.copytree(src, d)
        return d

    d = fresh("altered")
    p = d / "params.safetensors"
    data = bytearray(p.read_bytes())
    data[-3] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(RuntimeLoadError, match="params.safetensors was altered"):
        Engine(d)
    d = fresh("missing")
    lib = sorted((d / "kernels").iterdir())[0]
    lib.unlink()
    with pytest.raises(RuntimeLoadError, match=f"missing file kernels/{lib.name}"):
        Engine(d)
    d = fresh("version")
    m = json.loads((d / "manifest.json").read_text())
    m["lfmc_version"] = "0.0.1"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RuntimeLoadError, match="compiled by lfmc 0.0.1"):
        Engine(d)
    d = fresh("target")
    m = json.loads((d / "manifest.json").read_text())
    m["target"] |= {"name": "adreno", "driver": "opencl"}
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RuntimeLoadError, match="compiled for target 'adreno'"):
        Engine(d, device="cpu")
    with pytest.raises(RuntimeLoadError, match="not a device kernel library|needs pyopencl|no OpenCL"):
        Engine(d)                                   # its own driver (opencl) finds no device library
    d = fresh("escape")
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["../evil.so"] = "0" * 64
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RuntimeLoadError, match="outside the artifact"):
        Engine(d)
    with pytest.raises(RuntimeLoadError, match="not an lfmc artifact"):
        Engine(tmp_path)


def test_engine_imports_no_torch_or_compiler(artifacts):
    code = (
        "import sys\n"
        "from lfmc.runtime import Engine\n"
        f"e = Engine({str(artifacts['moe-b'])!r})\n"
        "r = e.generate([1, 2, 3], max_new_tokens=4, stop=[])\n"
        "assert len(r.tokens) == 4\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') or m.startswith("
        "('lfmc.frontend', 'lfmc.passes', 'lfmc.targets', 'lfmc.ir', 'lfmc.compile'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compile_is_atomic_on_failure(tmp_path, tiny_models, monkeypatch):
    from lfmc.targets import host

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(host, "build_host", boom)
    with pytest.raises(KeyboardInterrupt):
        compile_model(tiny_models["dense-c"], tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_read_bandwidth_buffer_follows_the_memory_available(served_artifact, monkeypatch):
    """Engine.measure_read_bandwidth streams a buffer of ``mib`` MiB, at most an eighth of the memory available
    (at least 64 MiB): on a device with little free memory the probe does not take it all. Its result is a rate."""
    from lfmc.runtime import Engine, engine as E

    eng = Engine(served_artifact, max_batch=1)
    sizes = []
    alloc = eng.driver.alloc

    def spy(shape, dtype):
        sizes.append(int(np.prod(shape)) * np.dtype(dtype).itemsize)
        return alloc(shape, dtype)

    monkeypatch.setattr(eng.driver, "alloc", spy)
    monkeypatch.setattr(E, "available_memory", lambda: None)
    assert eng.measure_read_bandwidth(96, reps=1) > 0
    monkeypatch.setattr(E, "available_memory", lambda: 8 * 80 << 20)
    assert eng.measure_read_bandwidth(256, reps=1) > 0
    monkeypatch.setattr(E, "available_memory", lambda: 100 << 20)
    assert eng.measure_read_bandwidth(256, reps=1) > 0
    big = [b >> 20 for b in sizes if b >= 32 << 20]
    assert [round(b) for b in big] == [96, 80, 64], big
