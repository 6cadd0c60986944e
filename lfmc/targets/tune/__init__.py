"""``lfmc tune``: meta_schedule over a model's distinct kernels, for one device, into a resumable database.

The flow: lower the model as ``lfmc compile`` would, collect its matmul kernels at the shapes they run (decode:
one row; prefill: a full chunk; see :mod:`.tasks`), time lfmc's default schedule of each (the baseline, stored as
a record so every candidate competes with it), then search in rounds, the task with the largest share of a
decode step first, trials split by share. After every round the database is saved, so an interrupted tune
resumes where it stopped without re-measuring finished tasks. ``lfmc compile --tuned DB`` builds a variant of
each kernel whose best record beats the default and the plan runs it at that shape (:func:`apply_tuned`).
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ...ir.errors import LfmcError
from ..lower import KernelSpec, Lowered
from .db import TuningDB, TuningDBError  # noqa: F401  (re-exported)
from .measure import (Measurer, TuneDeviceError, driver_measurer, light_tensor_intrin,  # noqa: F401
                      local_measurer, measure, model_measurer, rpc_measurer)
from .tasks import Task, describe, estimate_share, extract_tasks

ROUND = 8                       # candidates measured per search round (and the smallest allotment of a task)
MIN_GAIN = 0.01                 # a tuned record must beat the default schedule by 1% to be used
GIVE_UP_ROUNDS = 2              # rounds after which a task whose candidates stay 2x slower than default stops


@dataclass
class TuneReport:
    db: Path
    device: str
    measured: bool
    tasks: list[dict[str, Any]] = field(default_factory=list)
    trials: int = 0
    seconds: float = 0.0
    stopped: str = "done"


def workload_key(task: Task) -> str:
    """The database key of a task: the structural hash of its workload (the same across models and layers)."""
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(_module(task)) & (2**64 - 1):016x}"


def _module(task: Task):
    import tvm

    return tvm.IRModule({"main": task.workload()})


def tuning_target(prof):
    """The TVM target meta_schedule searches for: the profile's, with the core count it needs for llvm."""
    import tvm

    t = prof.target()
    if prof.family == "cpu":
        spec = dict(t.export())
        cores = prof.max_threads if prof.max_threads > 1 else 4
        spec["num-cores"] = int(cores)
        if prof.name == "host":
            from ..host import host_target

            spec = dict(host_target().export(), **{"num-cores": int(cores)})
        return tvm.target.Target(spec)
    return t


def _quiet_meta_schedule(log_file: Path) -> None:
    """meta_schedule prints tables at INFO to stdout: send them to the database's log file instead."""
    lg = logging.getLogger("tvm.s_tir.meta_schedule")
    lg.setLevel(logging.INFO)
    lg.propagate = False
    for h in list(lg.handlers):
        lg.removeHandler(h)
    h = logging.FileHandler(log_file)
    h.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    lg.addHandler(h)


def _allot(tasks: list[Task], share: dict[str, float], total: int) -> dict[str, int]:
    """Split ``total`` trials among the tasks: up to one round each, the rest in proportion to each task's
    share of time (largest remainders first), so that the allotments add up to ``total`` exactly."""
    n = len(tasks)
    floor = min(ROUND, total // n)
    out = {t.name: floor for t in tasks}
    if floor == 0:                                  # fewer trials than tasks: the largest shares get one
        for t in sorted(tasks, key=lambda t: -share[t.name])[:total]:
            out[t.name] = 1
        return out
    rest = total - floor * n
    s = sum(share.values()) or 1.0
    exact = {t.name: rest * share[t.name] / s for t in tasks}
    for k, v in exact.items():
        out[k] += int(v)
    left = total - sum(out.values())
    for k in sorted(exact, key=lambda k: -(exact[k] - int(exact[k])))[:left]:
        out[k] += 1
    return out


def make_measurer(prof, rpc: str | None = None, key: str | None = None, estimate: bool = False,
                  get_driver: Callable[[str], Any] | None = None) -> Measurer:
    """How candidates for ``prof`` will be timed (see :mod:`.measure`); unreachable devices fail here, fast.
    ``get_driver``: the runtime's driver factory, for GPU families (lfmc.runtime.drivers.get_driver)."""
    from ..backend import backend_for

    if not backend_for(prof).tunable:
        raise LfmcError(f"{prof.name}: a simulated wafer has no kernels to tune (its placement is chosen at compile "
                        "time; `lfmc compile --target ... --plan-only` shows it)")
    if estimate and rpc:
        raise LfmcError("--estimate ranks candidates without a device: drop --rpc, or drop --estimate to measure")
    if key and not rpc:
        raise LfmcError("--key names devices at an RPC tracker: give the tracker with --rpc HOST:PORT")
    if prof.family != "cpu":
        if estimate or rpc:
            raise LfmcError(f"{prof.name}: GPU kernels are measured through lfmc's {prof.driver} driver on the "
                            "device itself (no --rpc, no --estimate for GPU families yet)")
        from ..knobs import gpu_knobs

        if get_driver is None:
            raise LfmcError(f"{prof.name}: timing GPU candidates needs lfmc's runtime drivers (get_driver)")
        return driver_measurer(prof, gpu_knobs(prof.max_threads)["decode"].threads, get_driver)
    if estimate:
        return model_measurer(prof)
    if rpc:
        return rpc_measurer(rpc, key, prof)
    return local_measurer(prof)


def tune_model(low: Lowered, prof, db_root: str | Path, measurer: Measurer, *, trials: int = 64,
               time_budget_s: float | None = None, entries: Sequence[str] = ("decode", "prefill"),
               max_tasks: int | None = None, prefill_chunk: int = 256, seed: int = 0,
               progress: Callable[[dict[str, Any]], None] | None = None) -> TuneReport:
    """Tune the kernels of ``low`` (a lowered model, weights not needed) for ``prof`` into ``db_root``, timing
    candidates with ``measurer`` (:func:`make_measurer`)."""
    from tvm.s_tir import meta_schedule as ms

    if trials < 1:
        raise LfmcError("--trials must be at least 1")
    tasks = extract_tasks(low, prefill_chunk, tuple(entries))
    if max_tasks is not None:
        tasks = tasks[:max_tasks]
    if not tasks:
        raise LfmcError("the model has no tunable kernels for the chosen entries")
    light_tensor_intrin()
    target = tuning_target(prof)
    db = TuningDB.open_for_tuning(db_root, prof.name, measurer.identity, {"target": str(target.export()),
                                                                          "measured": measurer.measured})
    _quiet_meta_schedule(db.path / "tune.log")
    report = TuneReport(db.path, measurer.label, measurer.measured)
    t_start = time.perf_counter()
    keys = {t.name: workload_key(t) for t in tasks}
    emit = progress or (lambda ev: None)

    def info(t: Task) -> dict[str, Any]:
        return db.tasks.setdefault(keys[t.name], {"task": describe(t), "trials": 0, "done": False,
                                                  "default_s": None, "best_s": None, "measured": measurer.measured})

    # 1. the baseline: lfmc's default schedule of every task, timed once and stored as a record
    todo = [t for t in tasks if info(t)["default_s"] is None]
    for i, t in enumerate(todo):
        emit({"phase": "baseline", "i": i, "n": len(todo), "task": t.name})
        sch = t.default_schedule(target)
        measurer.task = (t.flops, t.bytes)
        secs, err = measure(measurer, [sch.mod], target)[0]
        if secs is None:
            raise LfmcError(f"timing the default schedule of {t.name} on {measurer.label} failed: "
                            f"{(err or '').strip()[-800:]}")
        wl = db.ms.commit_workload(_module(t))
        db.ms.commit_tuning_record(ms.database.TuningRecord(sch.trace, wl, [secs], target,
                                                            ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])))
        info(t).update(default_s=secs, best_s=min(secs, info(t)["best_s"] or math.inf))
        info(t)["history"] = [[info(t)["trials"], info(t)["best_s"]]]       # the tuning curve starts here
        db.save()
    # a task's share of its entry's time (a decode step, a prefill chunk): prefill chunks take hundreds of times
    # a decode step, so shares are compared within an entry and the trials split evenly between the entries
    share = {t.name: info(t)["default_s"] * t.launches.get(t.entry, 1) for t in tasks}
    for e in {t.entry for t in tasks}:
        tot = sum(share[t.name] for t in tasks if t.entry == e) or 1.0
        for t in tasks:
            if t.entry == e:
                share[t.name] /= tot
    entries_here = sorted({t.entry for t in tasks}, key=lambda e: e != "decode")
    allot: dict[str, int] = {}
    for i, e in enumerate(entries_here):
        mine = [t for t in tasks if t.entry == e]
        budget = trials // len(entries_here) + (1 if i < trials % len(entries_here) else 0)
        allot.update(_allot(mine, share, budget) if budget else {t.name: 0 for t in mine})
    # decode first (largest share first), then prefill
    order = sorted(tasks, key=lambda t: (t.entry != "decode", -share[t.name]))
    remaining = lambda: sum(max(0, allot[t.name] - info(t)["trials"]) for t in tasks)  # noqa: E731
    done_trials = 0
    cost_models: dict[str, Any] = {}
    try:
        while True:
            # the next round goes to the task furthest behind its allotment: decode tasks before prefill ones,
            # so a time budget that runs out leaves every decode kernel with its share of the search
            for t in tasks:
                if info(t)["trials"] >= allot[t.name] and not info(t)["done"]:
                    info(t)["done"] = True
                    db.save()
            open_ = [t for t in order if info(t)["trials"] < allot[t.name] and not info(t).get("gave_up")]
            if not open_:
                break
            phase = [t for t in open_ if t.entry == open_[0].entry]
            t = min(phase, key=lambda x: (info(x)["trials"] / allot[x.name], order.index(x)))
            rec = info(t)
            if time_budget_s is not None and time.perf_counter() - t_start > time_budget_s:
                report.stopped = "time budget"
                break
            n = min(ROUND, allot[t.name] - rec["trials"])
            elapsed = time.perf_counter() - t_start
            eta = elapsed / done_trials * remaining() if done_trials else None
            emit({"phase": "search", "task": t.name, "entry": t.entry, "trials": rec["trials"],
                  "allot": allot[t.name], "best_s": rec["best_s"], "default_s": rec["default_s"],
                  "tasks_done": sum(1 for x in tasks if info(x)["trials"] >= allot[x.name]), "tasks": len(tasks),
                  "eta_s": eta})
            measurer.task = (t.flops, t.bytes)
            cm = cost_models.setdefault(t.name, ms.cost_model.XGBModel(num_tuning_cores=measurer.parallel)
                                        if _has_xgboost() else "random")
            # GPU families (OpenCL, CUDA) share meta_schedule's GPU rules (thread binding, shared memory)
            space = (ms.space_generator.PostOrderApply(sch_rules="cuda", postprocs="cuda", mutator_probs="cuda")
                     if t.gpu else "post-order-apply")
            ctx = ms.TuneContext(mod=_module(t), target=target, space_generator=space,
                                 search_strategy=ms.search_strategy.EvolutionarySearch(
                                     population_size=256, init_min_unmeasured=32, genetic_num_iters=2),
                                 task_name=t.name, rand_state=seed + rec["trials"], num_threads=2,
                                 logger=logging.getLogger("tvm.s_tir.meta_schedule")).clone()
            with tempfile.TemporaryDirectory(prefix="lfmc-tune-") as wd:
                ms.tune_tasks(tasks=[ctx], task_weights=[1.0], work_dir=wd, max_trials_global=n,
                              num_trials_per_iter=n, builder=measurer.builder,
                              runner=measurer.runner_with_timeout(rec["default_s"]),
                              database=db.ms, cost_model=cm, task_scheduler="round-robin")
            rec["trials"] += n
            done_trials += n
            report.trials += n
            best = db.best(_module(t))
            if best is not None:
                rec["best_s"] = best[1]
            rec["done"] = rec["trials"] >= allot[t.name]
            rec["rounds"] = rec.get("rounds", 0) + 1
            rec.setdefault("history", []).append([rec["trials"], rec["best_s"]])
            near = db.near_default(_module(t), rec["default_s"])
            if rec["rounds"] >= GIVE_UP_ROUNDS and not near:
                # the search's space does not reach the default schedule (e.g. the SwiGLU kernels' paired
                # reduction, which meta_schedule cannot tile): its trials go to the other tasks
                rec["gave_up"] = True
                rec["done"] = True
                spare = allot[t.name] - rec["trials"]
                allot[t.name] = rec["trials"]
                peers = [x for x in tasks if x.entry == t.entry and not info(x).get("gave_up")
                         and info(x)["trials"] < allot[x.name]]
                for i, x in enumerate(peers):
                    allot[x.name] += spare // len(peers) + (1 if i < spare % len(peers) else 0)
            db.save()
    except KeyboardInterrupt:
        report.stopped = "interrupted"
        db.save()
    except Exception as e:
        if "KeyboardInterrupt" not in f"{type(e).__name__}: {e}":
            raise
        report.stopped = "interrupted"                 # a Ctrl-C that TVM's FFI wrapped on its way out
        db.save()
    report.seconds = time.perf_counter() - t_start
    for t in tasks:
        r = info(t)
        report.tasks.append({"name": t.name, "key": keys[t.name], "entry": t.entry, "trials": r["trials"],
                             "gave_up": bool(r.get("gave_up")),
                             "default_s": r["default_s"], "best_s": r["best_s"], "done": r["done"],
                             "share": share[t.name], "history": r.get("history", []),
                             "speedup": (r["default_s"] / r["best_s"]) if r["best_s"] else None})
    emit({"phase": "end", "report": report})
    return report


def _has_xgboost() -> bool:
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return False
    return True


def _fixed(name: str, func):
    """KernelSpec maker of a tuned variant: the scheduled PrimFunc, renamed."""
    return func.with_attr("global_symbol", name)


def apply_tuned(low: Lowered, db: TuningDB, prefill_chunk: int) -> dict[str, Any]:
    """Add a tuned variant of every kernel whose best record in ``db`` beats lfmc's default schedule, and the plan
    entries that pick it at its shape. Returns counts for the summary."""
    from tvm import s_tir

    tasks = extract_tasks(low, prefill_chunk)
    variants: dict[str, dict[str, str]] = {}
    counts = {"tasks": len(tasks), "tuned": 0, "default_fastest": 0, "no_record": 0}
    for t in tasks:
        meta = db.tasks.get(workload_key(t))
        best = db.best(_module(t)) if meta else None
        if best is None:
            counts["no_record"] += 1
            continue
        rec, secs = best
        if meta.get("default_s") and secs >= meta["default_s"] * (1 - MIN_GAIN):
            counts["default_fastest"] += 1
            continue
        sch = s_tir.Schedule(_module(t))
        try:
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
        except Exception as e:  # noqa: BLE001  (TVM's schedule errors)
            raise TuningDBError(f"{db.path}: the record of {t.name} does not apply to this model's kernel "
                                f"({str(e).strip().splitlines()[-1][:200]})") from None
        low.kernels[t.name] = KernelSpec(_fixed, (sch.mod["main"],))
        variants.setdefault(t.kernel, {})[str(t.nb)] = t.name
        counts["tuned"] += 1
    if variants:
        low.plan["variants"] = variants
    return counts


def apply_tuning_db(low: Lowered, prof, tuned: str | Path, prefill_chunk: int) -> dict[str, Any]:
    """Apply the tuning database ``tuned`` (a ``--db`` root or one device's folder) to ``low``: counts of what
    was used, where it was measured, and the database as the manifest records it (its profile / device folder
    and the hash of its records, no path of this machine)."""
    from ...options import tree_hash
    from .db import host_identity

    db = TuningDB.resolve(tuned, prof.name, host_identity() if prof.name == "host" else None)
    counts = apply_tuned(low, db, prefill_chunk)
    dev = db.meta["device"]
    counts.update(db=f"{db.path.parent.name}/{db.path.name}", records=tree_hash(db.path),
                  measured=bool(db.meta["target"].get("measured", True)),
                  device=(dev.get("cpu") or dev.get("device") or dev.get("key") or dev.get("server")
                          or dev.get("kind", "?")))
    return counts
