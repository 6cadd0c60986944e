"""Nothing lost, nothing nondeterministic, nothing exhausted: byte-identical recompiles, a compile killed with
SIGKILL leaves nothing that loads, a tuning database survives a kill mid-run, and the server under a loopback
load test (streaming clients, some leaving mid-stream, a slow reader) answers every completed request correctly
and returns to its memory baseline."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lfmc.compile import compile_model
from lfmc.runtime import Engine
from lfmc.runtime.errors import RuntimeLoadError


def _hashes(d: Path) -> dict[str, str]:
    out = {}
    for f in sorted(d.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            if f.name == "manifest.json":
                m = json.loads(data)
                m.pop("created", None)
                data = json.dumps(m, sort_keys=True).encode()
            out[str(f.relative_to(d))] = hashlib.sha256(data).hexdigest()
    return out


@pytest.mark.parametrize("target", ["host", "snapdragon-8gen3", "wafer-small"])
def test_compiles_are_byte_identical(tiny_models, tmp_path, target, monkeypatch):
    monkeypatch.setenv("LFMC_CACHE", "")             # two real builds, not one and a copy from the build cache
    kw = {"max_batch": 1, "max_context": 64} | ({"prefill_chunk": 16} if target != "wafer-small" else {})
    a = compile_model(tiny_models["dense-c"], tmp_path / "a", target, **kw)
    b = compile_model(tiny_models["dense-c"], tmp_path / "b", target, **kw)
    ha, hb = _hashes(Path(a)), _hashes(Path(b))
    assert ha == hb, sorted(k for k in ha if ha.get(k) != hb.get(k))
    created = [json.loads((Path(p) / "manifest.json").read_text())["created"] for p in (a, b)]
    assert all(created)                                         # the only field allowed to differ


def test_sigkill_mid_compile_leaves_nothing_that_loads(tmp_path):
    out = tmp_path / "big.host"
    p = subprocess.Popen([sys.executable, "-m", "lfmc", "compile", "lfm2-350m", "-o", str(out), "--quiet"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(tmp_path.glob(".big.host.*")):   # writing has started
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not out.exists()
    for leftover in tmp_path.glob(".big.host.*"):
        with pytest.raises(RuntimeLoadError):
            Engine(leftover)


@pytest.mark.slow
def test_tuning_database_survives_sigkill(tmp_path):
    import lfmc.cli as cli

    args = ["tune", "lfm2-tiny", "--db", str(tmp_path / "db"), "--trials", "16", "--max-tasks", "2", "--entries",
            "decode", "--quiet"]
    p = subprocess.Popen([sys.executable, "-m", "lfmc", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "db").rglob("database_tuning_record.json")):
        time.sleep(0.2)
    time.sleep(3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert cli.main(args) == 0                                  # resumes from what the killed run saved
    db = next((tmp_path / "db").rglob("lfmc-tuning.json"))
    state = json.loads(db.read_text())
    assert state["tasks"] and all(t["trials"] >= 1 for t in state["tasks"].values())


def _rss_kb(pid: int) -> int:
    from lfmc.sysmem import proc_kib

    kib = proc_kib(f"/proc/{pid}/status", "VmRSS")
    assert kib is not None, f"no resident memory for process {pid}: it has exited"
    return kib


def test_server_load_with_disconnects_and_a_slow_reader(served_artifact):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from tests.runtime.test_server import Server

    eng = Engine(served_artifact)
    s = Server(served_artifact)
    try:
        prompts = [f"load {i} " * (1 + i % 5) for i in range(12)]
        want = {p: eng.generate(p, 20).text for p in prompts}

        def client(i: int) -> str:
            p = prompts[i % len(prompts)]
            with httpx.stream("POST", s.url + "/v1/completions", timeout=120,
                              json={"prompt": p, "max_tokens": 20, "temperature": 0, "stream": True}) as r:
                assert r.status_code in (200, 429)
                if r.status_code == 429:
                    return "busy"
                text = ""
                for n, line in enumerate(r.iter_lines()):
                    if i % 4 == 3 and n == 2:
                        return "left"                           # disconnects mid-stream
                    if line.startswith("data: ") and line != "data: [DONE]":
                        text += json.loads(line[6:])["choices"][0]["text"]
                assert text == want[p], (i, p)
                return "ok"

        def slow_reader(stop: threading.Event) -> None:
            with httpx.stream("POST", s.url + "/v1/completions", timeout=120,
                              json={"prompt": "slow", "max_tokens": 200, "temperature": 0, "stream": True}) as r:
                for _ in r.iter_lines():
                    if stop.wait(0.05):
                        return

        for _ in range(2):                                      # warm-up: the baseline is the steady state
            list(ThreadPoolExecutor(8).map(client, range(8)))
        time.sleep(0.5)
        base = _rss_kb(s.proc.pid)
        stop = threading.Event()
        slow = threading.Thread(target=slow_reader, args=(stop,))
        slow.start()
        results = []
        t_end = time.time() + 8
        with ThreadPoolExecutor(16) as ex:
            while time.time() < t_end:
                results += list(ex.map(client, range(32)))
        stop.set()
        slow.join(60)
        assert results.count("ok") >= 32 and results.count("left") >= 8
        deadline = time.time() + 30
        while time.time() < deadline and (s.health()["active"] or s.health()["waiting"]):
            time.sleep(0.2)
        h = s.health()
        assert h["active"] == 0 and h["waiting"] == 0
        grown = _rss_kb(s.proc.pid) - base
        assert grown < 64 * 1024, f"server memory grew by {grown} KiB over the load test"
        r = httpx.post(s.url + "/v1/completions", json={"prompt": prompts[0], "max_tokens": 20, "temperature": 0},
                       timeout=60)
        assert r.json()["choices"][0]["text"] == want[prompts[0]]
    finally:
        s.stop()
    assert os.path.exists(served_artifact)
