"""How tuning candidates are timed: on this CPU, on remote devices over TVM's RPC, or by an analytical model.

Every way is a meta_schedule (builder, runner) pair, so the same search drives all of them:

- ``local``: this machine (LocalBuilder + LocalRunner), for the ``host`` profile;
- ``rpc``: TVM's RPC, through a tracker (``--rpc HOST:PORT --key KEY``: every server registered under KEY
  measures, in parallel) or one server directly (``--rpc HOST:PORT`` without a key); candidates are built
  here (cross-compiled for arm64 profiles) and uploaded;
- ``model``: not measured at all. Candidates are ranked by a roofline of the target profile (bandwidth, compute,
  cores, SIMD width) corrected for how well the candidate's loops use cores and vector lanes. Records made so
  are labelled ``measured: false`` in the database and everywhere they are reported.
"""
from __future__ import annotations

import functools
import json
import math
import os
import socket
import tempfile
from dataclasses import dataclass
from typing import Any

from ...ir.errors import LfmcError

BUILD_TIMEOUT_S = 600           # far above meta_schedule's 30 s: one build takes seconds to minutes on 2 cores
RUN_TIMEOUT_S = 120


class TuneDeviceError(LfmcError):
    """A tuning device that cannot be reached or used; the message names the address."""


@dataclass
class Measurer:
    """A builder and runner for one device, and what to call the device in reports and the database."""

    label: str
    builder: Any
    runner: Any
    identity: dict[str, Any]
    measured: bool = True
    device_type: str = "cpu"
    parallel: int = 1
    task: tuple[float, float] = (0.0, 0.0)    # (flops, bytes) of the task being tuned: the model mode reads it
    runner_for: Any = None                    # timeout (s) -> a runner killing slower candidates sooner

    def __enter__(self) -> "Measurer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the runners' worker processes (meta_schedule leaves them running otherwise)."""
        for r in [self.runner, *self.__dict__.get("_runners", {}).values()]:
            pool = getattr(r, "pool", None)
            if pool is not None:
                try:
                    pool.shutdown()
                except Exception:  # noqa: BLE001  (a pool already gone)
                    pass

    def runner_with_timeout(self, seconds: float):
        """The runner to use for a task whose default schedule takes ``seconds``: a candidate far slower than
        the default is not worth waiting for (meta_schedule's fixed timeout spent minutes on such ones)."""
        if self.runner_for is None:
            return self.runner
        limit = min(RUN_TIMEOUT_S, max(10, 2 ** math.ceil(math.log2(max(1.0, seconds * 9 * 30 + 5)))))
        cache = self.__dict__.setdefault("_runners", {})
        if limit not in cache:
            cache[limit] = self.runner_for(limit)
        return cache[limit]


def light_tensor_intrin() -> None:
    """Register only the CPU tensor intrinsics meta_schedule's CPU rules use. ``TuneContext`` imports
    ``tvm.s_tir.tensor_intrin``, whose CUDA part alone parses TVMScript for over a minute on this machine kind:
    the package is entered without its ``__init__`` so that other parts load only when something imports them."""
    import importlib.util
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    pkg = types.ModuleType(name)
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__package__ = name
    pkg.__spec__ = spec
    sys.modules[name] = pkg
    import tvm.s_tir

    tvm.s_tir.tensor_intrin = pkg
    for sub in ("x86", "arm_cpu"):
        importlib.import_module(f"{name}.{sub}")


def build_candidate(mod, target, _params=None):
    """The builder workers' build: plain ``tvm.tirx.build`` (meta_schedule's default first imports every tensor
    intrinsic, a minute per worker on 2 cores)."""
    import tvm

    return tvm.tirx.build(mod, target=target)


def _evaluator():
    from tvm.s_tir import meta_schedule as ms

    # caches flushed between repeats: decode streams weights from memory, as in a real step
    return ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=40, enable_cpu_cache_flush=True)


def _build_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


def local_measurer(profile) -> Measurer:
    """This CPU (the ``host`` profile)."""
    from tvm.s_tir import meta_schedule as ms

    from .db import host_identity

    if profile.name != "host":
        raise TuneDeviceError(f"profile {profile.name!r} is not this machine: measure it over --rpc, or rank "
                              f"candidates with --estimate (not measured)")
    def runner(timeout: float):
        return ms.runner.LocalRunner(timeout_sec=timeout, evaluator_config=_evaluator())

    return Measurer("this CPU", ms.builder.LocalBuilder(timeout_sec=BUILD_TIMEOUT_S, max_workers=_build_workers(),
                                                        f_build=build_candidate),
                    runner(RUN_TIMEOUT_S), host_identity(), runner_for=runner)


def parse_address(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise TuneDeviceError(f"--rpc {addr!r}: expected HOST:PORT")
    return host, int(port)


def _probe(host: str, port: int, what: str, timeout: float = 5.0) -> None:
    """Fail fast (seconds, not the RPC layer's minutes of retries) when nothing listens at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise TuneDeviceError(f"cannot reach the {what} at {host}:{port}: {e.strerror or e}") from None


def _direct_session(rpc_config):
    """An RPC session with one server (no tracker): the config's tracker address is the server's."""
    from tvm import rpc

    return rpc.connect(rpc_config.tracker_host, rpc_config.tracker_port,
                       session_timeout=rpc_config.session_timeout_sec)


def _export_cross(cxx: str, mod) -> str:
    """Export a candidate built for an arm64 Linux / Android device with the cross toolchain."""
    from tvm.contrib import cc

    path = os.path.join(tempfile.mkdtemp(prefix="lfmc-tune-"), "tmp_func.so")
    mod.export_library(path, fcompile=cc.cross_compiler(cxx))
    return path


def _export_for(profile):
    triple = str(profile.tvm.get("mtriple", "")) if profile.family == "cpu" else ""
    if profile.name == "host" or not triple:
        return None
    if "apple" in triple:
        raise TuneDeviceError(f"{profile.name}: tuning an Apple CPU over RPC is not supported yet (candidates "
                              "would need linking as Mach-O dylibs); use --estimate")
    import shutil

    cxx = shutil.which("aarch64-linux-gnu-g++")
    if cxx is None:
        raise TuneDeviceError("cross-building candidates for arm64 needs aarch64-linux-gnu-g++ "
                              "(Debian: apt install g++-aarch64-linux-gnu)")
    return functools.partial(_export_cross, cxx)


def rpc_measurer(addr: str, key: str | None, profile, session_timeout: int = 60) -> Measurer:
    """Remote devices over TVM's RPC: a tracker and KEY (all servers registered under KEY measure in
    parallel), or one server at ``addr`` when ``key`` is None."""
    from tvm.s_tir import meta_schedule as ms

    if profile.family != "cpu":
        raise TuneDeviceError(f"{profile.name}: RPC tuning needs a TVM runtime for {profile.family} on the device; "
                              "the package index's TVM runs CPU code only (use --estimate for this profile)")
    host, port = parse_address(addr)
    if key:
        _probe(host, port, "RPC tracker")
        cfg = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                  session_timeout_sec=session_timeout)
        try:
            n = cfg.count_num_servers(allow_missing=False)
        except Exception as e:  # noqa: BLE001  (TVM raises ValueError / TVMError / RPCError)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TuneDeviceError(f"RPC tracker {host}:{port}: no device registered under key {key!r} "
                                  f"({first})") from None
        runner = ms.runner.RPCRunner(cfg, evaluator_config=_evaluator(), max_workers=n)
        ident = {"kind": "rpc", "key": key, "profile": profile.name}
        label = f"{n} device{'s' if n > 1 else ''} with key {key!r} at tracker {host}:{port}"
    else:
        _probe(host, port, "RPC server")
        cfg = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key="direct",
                                  session_timeout_sec=session_timeout)
        runner = ms.runner.RPCRunner(cfg, evaluator_config=_evaluator(), max_workers=1,
                                     f_create_session=_direct_session)
        n = 1
        ident = {"kind": "rpc", "server": f"{host}:{port}", "profile": profile.name}
        label = f"RPC server {host}:{port}"
    builder = ms.builder.LocalBuilder(timeout_sec=BUILD_TIMEOUT_S, max_workers=_build_workers(),
                                      f_build=build_candidate, f_export=_export_for(profile))
    return Measurer(label, builder, runner, ident, parallel=n)


_FINISHED: list = []


def _finished(result):
    """A meta_schedule runner future that is already done (the in-process runners below time synchronously)."""
    if not _FINISHED:
        from tvm.ir.utils import derived_object
        from tvm.s_tir import meta_schedule as ms

        class _Done(ms.runner.PyRunnerFuture):
            def __init__(self, res):
                super().__init__()
                self.res = res

            def done(self):
                return True

            def result(self):
                return self.res

        _FINISHED.append(derived_object(_Done))
    return _FINISHED[0](result)


# ------------------------------------------------------------------------------------ analytical model
def loop_features(func) -> dict[str, float]:
    """What a scheduled PrimFunc's loops do with the machine: parallel extent (threads), vector lanes of the
    widest vectorized loop, and the register tile (product of unrolled extents)."""
    from tvm import tirx

    feats = {"parallel": 1.0, "vector": 1.0, "unroll": 1.0, "gpu_threads": 1.0, "gpu_blocks": 1.0}

    def visit(node):
        if isinstance(node, tirx.For):
            ext = node.extent.value if isinstance(node.extent, tirx.IntImm) else 1
            kind = int(node.kind)
            if kind == int(tirx.ForKind.PARALLEL):
                feats["parallel"] *= ext
            elif kind == int(tirx.ForKind.VECTORIZED):
                feats["vector"] = max(feats["vector"], ext)
            elif kind == int(tirx.ForKind.UNROLLED):
                feats["unroll"] *= ext
            elif kind == int(tirx.ForKind.THREAD_BINDING) and node.thread_binding is not None:
                tag = str(node.thread_binding.thread_tag)
                feats["gpu_threads" if tag.startswith("threadIdx") else "gpu_blocks"] *= ext

    from ..gpu.build import _walk            # TVM 0.27's Python API has no TIR visitor: lfmc's one walk

    _walk(func.body, visit)
    return feats


def model_seconds(feats: dict[str, float], flops: float, nbytes: float, profile) -> float:
    """The roofline time of a candidate on ``profile``: bytes over bandwidth vs flops over the compute the
    candidate can use (its parallel extent over the cores, its vector width over the SIMD width)."""
    cores = max(1, int(profile.max_threads if profile.family == "cpu" else 1))
    simd = max(1, int(profile.simd_width))
    par = feats["parallel"]
    use = min(par, cores) / cores * (par / (cores * -(-par // cores)) if par >= cores else 1.0)
    vec = min(feats["vector"], simd) / simd
    ilp = min(1.0, feats["unroll"] / 8.0) * 0.5 + 0.5          # independent accumulators hide FMA latency
    peak = max(profile.fp32_tflops, 0.05) * 1e12
    bw = max(profile.bandwidth_gbs, 1.0) * 1e9
    compute = flops / (peak * max(use * vec * ilp, 1e-3))
    memory = nbytes / (bw * max(use, 1.0 / cores) ** 0.5)      # one thread cannot saturate the memory system
    return max(compute, memory) + (5e-6 if par > 1 else 0.0)


def model_measurer(profile) -> Measurer:
    """Rank candidates with :func:`model_seconds` instead of running them; ``Measurer.task`` holds the (flops,
    bytes) of the task being tuned."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.ir.utils import derived_object

    @derived_object
    class _Build(ms.builder.PyBuilder):
        def build(self, build_inputs):
            out = []
            for bi in build_inputs:
                func = next(iter(bi.mod.functions.values()))
                # one folder per candidate: meta_schedule removes an artifact's folder once it is measured
                path = os.path.join(tempfile.mkdtemp(prefix="lfmc-model-"), "candidate.json")
                with open(path, "w") as f:
                    json.dump({"features": loop_features(func)}, f)
                out.append(ms.builder.BuilderResult(path, None))
            return out

    @derived_object
    class _Run(ms.runner.PyRunner):
        def run(self, runner_inputs):
            futs = []
            for ri in runner_inputs:
                with open(str(ri.artifact_path)) as f:
                    d = json.load(f)
                flops, nbytes = m.task
                secs = model_seconds(d["features"], flops, nbytes, profile)
                futs.append(_finished(ms.runner.RunnerResult([secs], None)))
            return futs

    ident = {"kind": "model", "profile": profile.name, "bandwidth_gbs": profile.bandwidth_gbs,
             "fp32_tflops": profile.fp32_tflops, "simd_width": profile.simd_width, "cores": profile.max_threads}
    m = Measurer(f"the {profile.name} profile's roofline model", _Build(), _Run(), ident,
                 measured=False)
    return m


# ------------------------------------------------------------------------------ GPUs through lfmc's drivers
def driver_identity(drv) -> dict[str, Any]:
    """The device an lfmc runtime driver runs on, as tuning records it."""
    if drv.name == "opencl":
        d = drv.device
        return {"kind": "opencl", "device": d.name.strip(), "platform": d.platform.name.strip(),
                "version": d.version.strip(), "compute_units": int(d.max_compute_units)}
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        return {"kind": "cuda", "device": props["name"].decode() if isinstance(props["name"], bytes)
                else str(props["name"]), "cc": f"{props['major']}.{props['minor']}"}
    except Exception:  # noqa: BLE001
        return {"kind": drv.name}


def _host_array(info: list, rng) -> Any:
    import numpy as np

    _, dtype, shape = info
    if dtype.startswith("float"):
        return (rng.standard_normal(shape) * 0.1).astype(dtype)
    if dtype == "uint16":                        # bf16 bits of small numbers
        return ((rng.standard_normal(shape) * 0.1).astype("float32").view("uint32") >> 16).astype("uint16")
    lo, hi = (-127, 128) if dtype == "int8" else (0, 16)
    return rng.integers(lo, hi, size=shape).astype(dtype)


def driver_measurer(profile, threads: int, get_driver) -> Measurer:
    """GPU candidates built by lfmc's GPU build (device source + launch table, no TVM runtime needed) and timed
    in this process by lfmc's runtime driver of the family: ``opencl`` (pyopencl: a phone's GPU wherever pyopencl
    runs; PoCL here, which checks the flow, not a GPU's speed) or ``cuda`` (CuPy, on an NVIDIA GPU).
    ``get_driver(name)`` makes the driver: the runtime's, handed in from above (targets do not import it)."""
    import time
    from pathlib import Path

    import numpy as np
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    from ..gpu.build import build_device

    if profile.driver not in ("opencl", "cuda"):
        raise TuneDeviceError(f"{profile.name}: lfmc has no {profile.driver} driver to time candidates with yet "
                              "(opencl and cuda profiles can be tuned)")
    try:
        drv = get_driver(profile.driver)
    except Exception as e:  # noqa: BLE001  (the runtime's load errors: no pyopencl, no device)
        raise TuneDeviceError(f"{profile.name}: cannot time candidates here: {e}") from None
    ev = _evaluator()

    @derived_object
    class _Build(ms.builder.PyBuilder):
        def build(self, build_inputs):
            out = []
            for bi in build_inputs:
                try:
                    func = bi.mod["main"].with_attr("global_symbol", "cand")
                    source, table, _ = build_device({"cand": func}, bi.target, threads)
                except Exception as e:  # noqa: BLE001  (a candidate TVM cannot lower is a failed build)
                    out.append(ms.builder.BuilderResult(None, f"{type(e).__name__}: {str(e)[-500:]}"))
                    continue
                path = Path(tempfile.mkdtemp(prefix="lfmc-gpu-")) / "device.json"
                path.write_text(json.dumps({"api": profile.family, "target": profile.family, "source": source,
                                            "table": table}))
                out.append(ms.builder.BuilderResult(str(path), None))
            return out

    rng = np.random.default_rng(0)

    @derived_object
    class _Run(ms.runner.PyRunner):
        def run(self, runner_inputs):
            futs = []
            for ri in runner_inputs:
                try:
                    k = drv.function(drv.load_library(Path(str(ri.artifact_path))), "cand")
                    args = []
                    for info in ri.args_info:
                        j = info.as_json()
                        args.append(drv.device_view(drv.to_device(_host_array(j, rng)), tuple(j[2])))
                    k(*args)
                    drv.sync()
                    secs = []
                    for _ in range(ev.repeat):
                        t0 = time.perf_counter()
                        for _ in range(ev.number):
                            k(*args)
                        drv.sync()
                        secs.append((time.perf_counter() - t0) / ev.number)
                    res = ms.runner.RunnerResult(secs, None)
                except Exception as e:  # noqa: BLE001  (the device refusing a candidate is a failed run)
                    res = ms.runner.RunnerResult(None, f"{type(e).__name__}: {str(e)[-500:]}")
                futs.append(_finished(res))
            return futs

    ident = driver_identity(drv)
    return Measurer(f"the {drv.name} driver on {ident.get('device', '?')}", _Build(), _Run(), ident,
                    device_type=profile.driver)


def measure(measurer: Measurer, mods: list, target) -> list[tuple[float | None, str | None]]:
    """Build and time scheduled modules outside the search (lfmc's default schedules, the baseline).
    Returns (median seconds or None, error) per module."""
    from tvm.s_tir import meta_schedule as ms

    builds = measurer.builder.build([ms.builder.BuilderInput(m, target) for m in mods])
    out: list[tuple[float | None, str | None]] = [(None, None)] * len(mods)
    inputs, where = [], []
    for i, (m, b) in enumerate(zip(mods, builds)):
        if b.error_msg:
            out[i] = (None, str(b.error_msg))
            continue
        func = next(iter(m.functions.values()))
        inputs.append(ms.runner.RunnerInput(b.artifact_path, measurer.device_type,
                                            ms.arg_info.ArgInfo.from_prim_func(func)))
        where.append(i)
    for i, fut in zip(where, measurer.runner.run(inputs)):
        r = fut.result()
        if r.error_msg:
            out[i] = (None, str(r.error_msg))
        else:
            from .db import median_secs

            out[i] = (median_secs(r.run_secs), None)
    return out
