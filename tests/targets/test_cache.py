"""The build cache: a recompile takes every kernel from it and writes the same artifact; anything that changes a
kernel's bytes changes its key; damaged, read-only and oversized caches are handled, never fatal."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from lfmc.compile import compile_model
from lfmc.runtime import Engine
from lfmc.targets import cache
from lfmc.targets.kernels import Knobs
from lfmc.targets.lower import KernelSpec

KW = {"max_batch": 1, "max_context": 32, "prefill_chunk": 8}


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


@pytest.fixture
def cold(tmp_path, monkeypatch):
    monkeypatch.setenv("LFMC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "cpu"


def test_recompile_builds_nothing_and_writes_the_same_artifact(tiny_models, tmp_path, cold, monkeypatch):
    m = tiny_models["dense-a"]
    a = compile_model(m, tmp_path / "a", "host", **KW)
    n = len([p for p in a.glob("kernels/*.so") if p.name != "lfmc_step.so"])      # the step runner is not cached
    assert n > 5 and len(list(cold.glob("*.so"))) == n
    import tvm

    def no_build(*a, **k):
        raise AssertionError("a cached kernel was built again")

    monkeypatch.setattr(tvm, "compile", no_build)
    logs: list[str] = []
    b = compile_model(m, tmp_path / "b", "host", log=logs.append, **KW)
    assert _files(a) == _files(b)
    assert f"kernel libraries: {n}, {n} of them from the build cache ({cold})" in logs
    eng = Engine(b)                                     # the copies load and run
    s = eng.new_sequence()
    assert eng.prefill(s, [1, 2, 3]).shape == (eng.vocab_size,)


def test_key_follows_what_the_bytes_depend_on(monkeypatch):
    kw = dict(N=64, K=32, knobs=Knobs(lanes=8), bias=None, rms_eps=1e-5, quant=("q4", 32))
    spec = KernelSpec(lambda *a, **k: None, kw)
    spec.maker.__name__ = "make_matmul"
    k, func = cache.kernel_key("t", "llvm", "k_a", spec)
    assert func is None                                 # plain arguments: keyed without building the TIR
    assert cache.kernel_key("t", "llvm", "k_a", spec)[0] == k
    changed = [
        cache.kernel_key("t", "llvm -mcpu=znver4", "k_a", spec)[0],                      # target
        cache.kernel_key("t", "llvm", "k_b", spec)[0],                                  # symbol name
        cache.kernel_key("t", "llvm", "k_a", KernelSpec(spec.maker, {**kw, "knobs": Knobs(lanes=16)}))[0],  # a knob
        cache.kernel_key("t", "llvm", "k_a", KernelSpec(spec.maker, {**kw, "rms_eps": 1e-6}))[0],  # a float argument
        cache.kernel_key("u", "llvm", "k_a", spec)[0],                                  # the build's format
    ]
    monkeypatch.setattr(cache, "maker_sources", lambda: "edited kernels.py")
    changed.append(cache.kernel_key("t", "llvm", "k_a", spec)[0])                        # the makers' source
    assert len({k, *changed}) == len(changed) + 1


def test_tuned_schedules_are_keyed_by_their_tir():
    from lfmc.targets.kernels import make_rmsnorm

    f = make_rmsnorm("k_norm", 64, 1e-5)
    spec = KernelSpec(lambda name, func: func, {"func": f})       # what compile builds for a tuned variant: a fixed PrimFunc
    k, built = cache.kernel_key("t", "llvm", "k_norm", spec)
    assert built is not None
    assert k == cache.cache_key("t", cache.versions(), "llvm", "k_norm", "tir", built.script())


def test_damaged_entries_are_rebuilt(tiny_models, tmp_path, cold):
    m = tiny_models["dense-a"]
    a = compile_model(m, tmp_path / "a", "host", **KW)
    victim = sorted(cold.glob("*.so"))[0]
    raw = bytearray(victim.read_bytes())
    raw[-100] ^= 0xFF                                   # one flipped byte in the library
    victim.write_bytes(bytes(raw))
    b = compile_model(m, tmp_path / "b", "host", **KW)
    assert _files(a) == _files(b)
    assert hashlib.sha256(victim.read_bytes()).digest() != hashlib.sha256(bytes(raw)).digest()   # rewritten


def test_cache_off_unwritable_and_trimmed(tiny_models, tmp_path, monkeypatch):
    m = tiny_models["dense-a"]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LFMC_CACHE", "")
    compile_model(m, tmp_path / "a", "host", **KW)
    assert cache.cache_dir("cpu") is None and not (tmp_path / "home").exists()      # off: nothing written
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("LFMC_CACHE", str(tmp_path / "a-file"))                       # cannot be created
    compile_model(m, tmp_path / "b", "host", **KW)
    assert _files(tmp_path / "a") == _files(tmp_path / "b") and (tmp_path / "a-file").read_text() == "not a folder"
    d = tmp_path / "lru"
    monkeypatch.setenv("LFMC_CACHE", str(d))
    for i in range(4):                                  # four 1 MiB entries, oldest first
        cache.put("cpu", f"k{i}", {".so": bytes(2**20)})
        os.utime(d / "cpu" / f"k{i}.so", (time.time() - 100 + i, time.time() - 100 + i))
    assert cache.get("cpu", "k0", ".so") == bytes(2**20)   # a hit makes k0 the most recently used
    monkeypatch.setenv("LFMC_CACHE_MAX_MB", "2.5")
    removed = cache.trim("cpu")
    assert sorted(p.name for p in removed) == ["k1.so", "k2.so"]
    assert sorted(p.name for p in (d / "cpu").iterdir()) == ["k0.so", "k3.so"]
