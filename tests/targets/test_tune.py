"""lfmc tune: tasks, databases (resume, corrupt, foreign), RPC devices (tracker + two servers on loopback),
the estimate mode, and compile --tuned (variants applied, numerics unchanged)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from lfmc.compile import compile_model, lower_for_target
from lfmc.frontend import import_preset
from lfmc.targets.profiles import get_profile
from lfmc.targets.tune import TuningDB, TuningDBError, make_measurer, tune_model
from lfmc.targets.tune.db import META, RECORDS, host_identity
from lfmc.targets.tune.measure import TuneDeviceError
from lfmc.targets.tune.tasks import extract_tasks
from tests.helpers import has_opencl

CHUNK = 16


@pytest.fixture(scope="module")
def tiny():
    return import_preset("lfm2-tiny", weights=True, seed=3)


@pytest.fixture(scope="module")
def lowered(tiny):
    return lower_for_target(tiny, "host")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _record_counts(db: TuningDB) -> dict[int, int]:
    """Measured records per workload index in the meta_schedule record file."""
    out: dict[int, int] = {}
    for line in (db.path / RECORDS).read_text().splitlines():
        if line.strip():
            w = json.loads(line)[0]
            out[w] = out.get(w, 0) + 1
    return out


def test_tasks_cover_every_matmul_launch_at_its_shape(lowered):
    prof, low = lowered
    tasks = extract_tasks(low, CHUNK)
    R = {e: low.plan["row_tile"][e] for e in ("decode", "prefill")}
    mm = {e: [L for L in low.plan["entries"][e] if L["kernel"].startswith("k_mm_")] for e in R}
    assert sum(t.launches.get("decode", 0) for t in tasks) == len(mm["decode"])
    assert sum(t.launches.get("prefill", 0) for t in tasks) == len(mm["prefill"])
    assert all(t.nb == 1 for t in tasks if t.entry == "decode")
    prefill_nb = {t.nb for t in tasks if "prefill" in t.launches}
    assert -(-CHUNK // R["prefill"]) in prefill_nb        # the full chunk; the LM head's fixed tile is 1
    assert tasks[0].entry == "decode"                      # decode first, by share
    wl = tasks[0].workload()
    assert len(wl.params) == len(low.kernels[tasks[0].kernel].build("x").params) - 1   # no nb argument


def test_default_schedule_of_a_task_equals_the_generic_kernel(lowered):
    import tvm

    prof, low = lowered
    t = next(x for x in extract_tasks(low, CHUNK) if x.entry == "prefill")
    fixed = tvm.compile(t.default_schedule(None).mod, target="llvm")
    generic = tvm.compile(tvm.IRModule({"g": low.kernels[t.kernel].build("g")}), target="llvm")
    rng = np.random.default_rng(0)
    from tvm.s_tir import meta_schedule as ms

    args = []
    for info in ms.arg_info.ArgInfo.from_prim_func(t.workload()):
        shape, dt = [int(s) for s in info.shape], str(info.dtype)
        args.append((rng.integers(0, 15, shape) if "int" in dt else rng.standard_normal(shape)).astype(dt))
    out1 = [tvm.runtime.tensor(a) for a in args]
    out2 = [tvm.runtime.tensor(a) for a in args]
    fixed["main"](*out1)
    generic["g"](*out2, t.nb)
    np.testing.assert_allclose(out1[-1].numpy(), out2[-1].numpy(), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def rpc_devices():
    """A TVM RPC tracker and two servers under one key, on 127.0.0.1, for this module."""
    tport, key = _free_port(), "lfmc-test"
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                               str(tport), "--port-end", str(tport + 1)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", tport), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                                           "--port", str(_free_port()), "--port-end", "65000", "--tracker",
                                           f"127.0.0.1:{tport}", "--key", key],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from tvm.s_tir import meta_schedule as ms

        cfg = ms.runner.RPCConfig(tracker_host="127.0.0.1", tracker_port=tport, tracker_key=key,
                                  session_timeout_sec=10)
        while time.time() < deadline and cfg.count_num_servers(allow_missing=True) < 2:
            time.sleep(1)
        assert cfg.count_num_servers(allow_missing=True) == 2, "the RPC servers did not register"
        yield f"127.0.0.1:{tport}", key
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_tune_over_rpc_resume_and_apply(tiny, lowered, rpc_devices, tmp_path):
    """The CI-sized tune: two kernels, a handful of trials, measured by two RPC servers through a tracker;
    interrupted after the first task and resumed without re-measuring it; applied by compile (numerics unchanged)."""
    from lfmc.ir.interp import Interpreter
    from lfmc.runtime import Engine
    from tests.helpers import assert_follows_interpreter

    prof, low = lowered
    addr, key = rpc_devices
    m = make_measurer(prof, addr, key)
    assert m.parallel == 2 and "2 devices" in m.label
    seen = []

    def stop_after_first(ev):
        seen.append(ev)
        if ev["phase"] == "search" and ev["tasks_done"] >= 1:
            raise KeyboardInterrupt

    r1 = tune_model(low, prof, tmp_path / "db", m, trials=8, max_tasks=2, prefill_chunk=CHUNK,
                    progress=stop_after_first)
    assert r1.stopped == "interrupted"
    db = TuningDB.load(r1.db)
    assert db.meta["device"] == {"kind": "rpc", "key": key, "profile": "host"}
    done = [k for k, v in db.tasks.items() if v["done"]]
    assert len(done) == 1 and all(v["default_s"] > 0 for v in db.tasks.values())
    before = _record_counts(db)
    first = db.tasks[done[0]]["trials"]

    events = []
    r2 = tune_model(low, prof, tmp_path / "db", m, trials=8, max_tasks=2, prefill_chunk=CHUNK,
                    progress=events.append)
    m.close()
    assert not any(e["phase"] == "baseline" for e in events)  # baselines came from the database
    assert r2.stopped == "done" and r2.db == r1.db
    db = TuningDB.load(r2.db)
    assert all(v["done"] for v in db.tasks.values())
    assert db.tasks[done[0]]["trials"] == first                # the finished task was not searched again
    after = _record_counts(db)
    grew = [w for w in after if after[w] > before.get(w, 0)]
    assert len(grew) == 1                                      # only the unfinished task measured more
    assert sum(after.values()) == sum(before.values()) + r2.trials

    # compile with the database; make every record count as faster so that variants are certainly built
    leaf = r2.db
    meta = json.loads((leaf / META).read_text())
    for v in meta["tasks"].values():
        v["default_s"] = 1.0
    (leaf / META).write_text(json.dumps(meta))
    logs = []
    art = compile_model(tiny, tmp_path / "art", "host", prefill_chunk=CHUNK, tuned=tmp_path / "db", log=logs.append)
    man = json.loads((art / "manifest.json").read_text())
    assert man["tuning"]["tuned"] == 2 and man["tuning"]["measured"] is True
    assert any("tuned kernels: 2 of" in s for s in logs)
    variants = man["plan"]["variants"]
    assert sum(len(v) for v in variants.values()) == 2
    eng = Engine(art)
    used = {k for e, n in (("decode", 1), ("prefill", CHUNK)) for k, _ in eng._launches(e, n)}
    assert {k for v in variants.values() for k in v.values()} <= used
    it = Interpreter(tiny.graph, tiny.weights)
    rng = np.random.default_rng(1)
    for plen in (3, CHUNK, CHUNK + 5):                         # partial, full (tuned prefill) and two chunks
        assert_follows_interpreter(it, eng, rng.integers(0, 256, plen).tolist(), steps=4, where=(plen,))


def test_compile_keeps_default_schedules_that_measured_fastest(tiny, tmp_path):
    prof, low = lower_for_target(tiny, "host")
    with make_measurer(prof, estimate=False) as m:
        r = tune_model(low, prof, tmp_path / "db", m, trials=1, max_tasks=1, prefill_chunk=CHUNK)
    db = TuningDB.load(r.db)
    (t,) = db.tasks.values()
    assert t["best_s"] <= t["default_s"]
    art = compile_model(tiny, tmp_path / "art", "host", prefill_chunk=CHUNK, tuned=r.db)
    man = json.loads((art / "manifest.json").read_text())
    tuning = man["tuning"]
    assert tuning["tuned"] + tuning["default_fastest"] == 1 and tuning["no_record"] == tuning["tasks"] - 1
    assert bool(man["plan"].get("variants")) == (tuning["tuned"] == 1)


def test_estimate_mode_is_labelled_not_measured(tiny, tmp_path):
    prof, low = lower_for_target(tiny, "snapdragon-8gen3:cpu")
    with make_measurer(prof, estimate=True) as m:
        r = tune_model(low, prof, tmp_path / "db", m, trials=8, max_tasks=1, prefill_chunk=CHUNK)
    assert not r.measured and "roofline" in r.device
    db = TuningDB.load(r.db)
    assert db.meta["target"]["measured"] is False and db.meta["device"]["kind"] == "model"
    assert all(v["best_s"] <= v["default_s"] for v in db.tasks.values())
    assert r.tasks[0]["trials"] == 8


def test_unreachable_rpc_fails_fast_naming_the_address():
    prof = get_profile("host")
    t0 = time.perf_counter()
    with pytest.raises(TuneDeviceError, match="127.0.0.1:1"):
        make_measurer(prof, "127.0.0.1:1", "some-key")
    with pytest.raises(TuneDeviceError, match="127.0.0.1:1"):
        make_measurer(prof, "127.0.0.1:1")
    assert time.perf_counter() - t0 < 60       # not the RPC layer's retry loop (generous: a loaded CI machine)
    with pytest.raises(TuneDeviceError, match="HOST:PORT"):
        make_measurer(prof, "nohostport", "k")


def test_unknown_key_at_a_live_tracker_is_named(rpc_devices):
    addr, _ = rpc_devices
    with pytest.raises(TuneDeviceError, match=f"{addr}.*no device registered under key 'other'"):
        make_measurer(get_profile("host"), addr, "other")


def _fake_db(tmp_path, profile="host", device=None):
    leaf = TuningDB.folder(tmp_path, profile, device or host_identity())
    leaf.mkdir(parents=True)
    meta = {"format": "lfmc-tuning-db", "version": 1, "profile": profile, "device": device or host_identity(),
            "target": {"target": "{}", "measured": True}, "tasks": {}}
    (leaf / META).write_text(json.dumps(meta))
    return leaf


def test_corrupt_and_foreign_databases_are_refused(tmp_path):
    leaf = _fake_db(tmp_path / "a")
    assert TuningDB.resolve(tmp_path / "a", "host", host_identity()).path == leaf
    with pytest.raises(TuningDBError, match="tuned for profile 'host', not 'apple-m4:cpu'"):
        TuningDB.resolve(leaf, "apple-m4:cpu", None)
    with pytest.raises(TuningDBError, match="no tuning database for profile 'iphone:cpu'"):
        TuningDB.resolve(tmp_path / "a", "iphone:cpu", None)
    other = dict(host_identity(), cpu="Some Other CPU")
    leaf_b = _fake_db(tmp_path / "b", device=other)
    with pytest.raises(TuningDBError, match="another CPU"):
        TuningDB.resolve(leaf_b, "host", host_identity())
    (leaf / META).write_text("{not json")
    with pytest.raises(TuningDBError, match="corrupt"):
        TuningDB.load(leaf)
    (leaf / META).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(TuningDBError, match="not an lfmc tuning database"):
        TuningDB.load(leaf)
    with pytest.raises(TuningDBError, match="does not exist"):
        TuningDB.resolve(tmp_path / "missing", "host", None)


def test_torn_record_line_is_cut_and_a_corrupt_one_refused(tmp_path):
    leaf = _fake_db(tmp_path)
    (leaf / "database_workload.json").write_text('["1", "x"]\n')
    (leaf / RECORDS).write_text('[0, ["t"]]\n[0, ["half a rec')         # killed mid-write
    TuningDB.load(leaf)
    assert (leaf / RECORDS).read_text() == '[0, ["t"]]\n'
    (leaf / RECORDS).write_text('[0, ["t"]]\ngarbage\n[0, ["t"]]\n')
    with pytest.raises(TuningDBError, match=f"{RECORDS}: line 2 is corrupt"):
        TuningDB.load(leaf)


def test_cli_tune_refuses_bad_options(tmp_path, capsys):
    from lfmc.cli import main

    assert main(["tune", "lfm2-tiny", "--db", str(tmp_path), "--key", "k"]) == 2
    assert "--rpc" in capsys.readouterr().err
    assert main(["tune", "lfm2-tiny", "--db", str(tmp_path), "--entries", "decode,nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["tune", "lfm2-tiny", "--target", "amd-mi300x", "--db", str(tmp_path)]) == 2
    assert "no hip driver" in capsys.readouterr().err
    assert main(["compile", "lfm2-tiny", "--tuned", str(tmp_path / "none"), "-o", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(not has_opencl(), reason="no OpenCL device (apt install pocl-opencl-icd)")
def test_opencl_candidates_are_timed_by_the_opencl_driver(tiny, tmp_path):
    """GPU tuning without a TVM runtime: candidates built by lfmc's GPU build, timed through the opencl driver
    (PoCL here: a functional check of the flow), applied by compile; the tuned artifact runs on the driver and
    follows the interpreter."""
    from lfmc.ir.interp import Interpreter
    from lfmc.runtime import Engine
    from tests.helpers import assert_follows_interpreter

    from lfmc.runtime.drivers import get_driver

    prof, low = lower_for_target(tiny, "snapdragon-8gen3", quant=None)
    m = make_measurer(prof, get_driver=get_driver)
    assert m.identity["kind"] == "opencl" and m.device_type == "opencl"
    r = tune_model(low, prof, tmp_path / "db", m, trials=4, max_tasks=1, prefill_chunk=CHUNK)
    m.close()
    assert r.measured and r.trials == 4 and r.tasks[0]["default_s"] > 0
    leaf = r.db
    meta = json.loads((leaf / META).read_text())
    for v in meta["tasks"].values():
        v["default_s"] = 1.0
    (leaf / META).write_text(json.dumps(meta))
    art = compile_model(tiny, tmp_path / "art", "snapdragon-8gen3", quant=None, prefill_chunk=CHUNK,
                        tuned=tmp_path / "db")
    man = json.loads((art / "manifest.json").read_text())
    assert man["tuning"]["tuned"] == 1 and man["plan"]["variants"]
    eng = Engine(art)
    it = Interpreter(tiny.graph, tiny.weights)
    assert_follows_interpreter(it, eng, list(range(1, 6)), steps=4)


@pytest.mark.slow
def test_ctrl_c_keeps_what_was_measured_and_the_same_command_resumes(tmp_path):
    """A real SIGINT to `lfmc tune` in the middle of the search: exit 130, database intact; the same command
    then finishes without timing the baselines again or repeating the finished trials."""
    import os
    import signal

    db = tmp_path / "db"
    cmd = [sys.executable, "-m", "lfmc.cli", "tune", "lfm2-tiny", "--db", str(db), "--trials", "16",
           "--max-tasks", "2", "--prefill-chunk", str(CHUNK)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.time() + 600
    metas = []
    while time.time() < deadline and p.poll() is None:
        metas = list(db.glob(f"*/*/{META}"))
        if metas:
            tasks = json.loads(metas[0].read_text())["tasks"]
            if len(tasks) == 2 and all(v["default_s"] for v in tasks.values()):
                break
        time.sleep(0.5)
    assert p.poll() is None, p.communicate()
    time.sleep(3)                                  # inside the first search round
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 130, err[-2000:]
    first = TuningDB.load(metas[0].parent)
    assert all(v["default_s"] for v in first.tasks.values())
    trials_before = {k: v["trials"] for k, v in first.tasks.items()}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "timing lfmc's default schedules" not in r.stdout
    done = TuningDB.load(metas[0].parent)
    assert all(v["done"] for v in done.tasks.values())
    assert all(done.tasks[k]["trials"] >= n for k, n in trials_before.items())
    assert sum(v["trials"] for v in done.tasks.values()) == 16
