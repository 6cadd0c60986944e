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
    s = _Session(tasks, db, measurer, target, progress or (lambda ev: None), seed)
    s.baseline()                    # 1. lfmc's default schedule of every task, timed once and stored as a record
    s.allot(trials)                 # 2. the trials split by each task's share of its entry's time
    try:
        while (t := s.next_task()) is not None:      # 3. rounds of search, the task furthest behind first
            if time_budget_s is not None and time.perf_counter() - s.t_start > time_budget_s:
                s.report.stopped = "time budget"
                break
            s.search(t)
    except KeyboardInterrupt:
        s.report.stopped = "interrupted"
        db.save()
    except Exception as e:
        if "KeyboardInterrupt" not in f"{type(e).__name__}: {e}":
            raise
        s.report.stopped = "interrupted"               # a Ctrl-C that TVM's FFI wrapped on its way out
        db.save()
    return s.finish()


class _Session:
    """One ``tune_model`` run: its tasks, their records in the database, their allotments and the report."""

    def __init__(self, tasks: list[Task], db: TuningDB, measurer: Measurer, target, emit, seed: int):
        self.tasks, self.db, self.measurer, self.target, self.emit, self.seed = tasks, db, measurer, target, emit, seed
        self.report = TuneReport(db.path, measurer.label, measurer.measured)
        self.t_start = time.perf_counter()
        self.keys = {t.name: workload_key(t) for t in tasks}
        self.share: dict[str, float] = {}
        self.allotted: dict[str, int] = {}
        self.order: list[Task] = []
        self.done_trials = 0
        self.cost_models: dict[str, Any] = {}

    def info(self, t: Task) -> dict[str, Any]:
        """The task's record in the database (its trials, default and best times, history)."""
        return self.db.tasks.setdefault(self.keys[t.name], {
            "task": describe(t), "trials": 0, "done": False, "default_s": None, "best_s": None,
            "measured": self.measurer.measured})

    def baseline(self) -> None:
        """Time lfmc's default schedule of each task not yet timed and store it as the record to beat."""
        from tvm.s_tir import meta_schedule as ms

        todo = [t for t in self.tasks if self.info(t)["default_s"] is None]
        for i, t in enumerate(todo):
            self.emit({"phase": "baseline", "i": i, "n": len(todo), "task": t.name})
            sch = t.default_schedule(self.target)
            self.measurer.task = (t.flops, t.bytes)
            secs, err = measure(self.measurer, [sch.mod], self.target)[0]
            if secs is None:
                raise LfmcError(f"timing the default schedule of {t.name} on {self.measurer.label} failed: "
                                f"{(err or '').strip()[-800:]}")
            wl = self.db.ms.commit_workload(_module(t))
            self.db.ms.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, wl, [secs], self.target, ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])))
            rec = self.info(t)
            rec.update(default_s=secs, best_s=min(secs, rec["best_s"] or math.inf))
            rec["history"] = [[rec["trials"], rec["best_s"]]]           # the tuning curve starts here
            self.db.save()

    def allot(self, trials: int) -> None:
        """Each task's share of its entry's time (a decode step, a prefill chunk: prefill chunks take hundreds of
        times a decode step, so shares are compared within an entry), and the trials split evenly between the
        entries, then by share; decode tasks are searched first, largest share first."""
        tasks = self.tasks
        self.share = {t.name: self.info(t)["default_s"] * t.launches.get(t.entry, 1) for t in tasks}
        for e in {t.entry for t in tasks}:
            tot = sum(self.share[t.name] for t in tasks if t.entry == e) or 1.0
            for t in tasks:
                if t.entry == e:
                    self.share[t.name] /= tot
        entries_here = sorted({t.entry for t in tasks}, key=lambda e: e != "decode")
        for i, e in enumerate(entries_here):
            mine = [t for t in tasks if t.entry == e]
            budget = trials // len(entries_here) + (1 if i < trials % len(entries_here) else 0)
            self.allotted.update(_allot(mine, self.share, budget) if budget else {t.name: 0 for t in mine})
        self.order = sorted(tasks, key=lambda t: (t.entry != "decode", -self.share[t.name]))

    def next_task(self) -> Task | None:
        """The task furthest behind its allotment: decode tasks before prefill ones, so a time budget that runs
        out leaves every decode kernel with its share of the search. None when all are done."""
        for t in self.tasks:
            if self.info(t)["trials"] >= self.allotted[t.name] and not self.info(t)["done"]:
                self.info(t)["done"] = True
                self.db.save()
        open_ = [t for t in self.order if self.info(t)["trials"] < self.allotted[t.name]
                 and not self.info(t).get("gave_up")]
        if not open_:
            return None
        phase = [t for t in open_ if t.entry == open_[0].entry]
        return min(phase, key=lambda x: (self.info(x)["trials"] / self.allotted[x.name], self.order.index(x)))

    def search(self, t: Task) -> None:
        """One round of meta_schedule's evolutionary search on ``t``, its records into the database."""
        from tvm.s_tir import meta_schedule as ms

        rec = self.info(t)
        n = min(ROUND, self.allotted[t.name] - rec["trials"])
        remaining = sum(max(0, self.allotted[x.name] - self.info(x)["trials"]) for x in self.tasks)
        elapsed = time.perf_counter() - self.t_start
        self.emit({"phase": "search", "task": t.name, "entry": t.entry, "trials": rec["trials"],
                   "allot": self.allotted[t.name], "best_s": rec["best_s"], "default_s": rec["default_s"],
                   "tasks_done": sum(1 for x in self.tasks if self.info(x)["trials"] >= self.allotted[x.name]),
                   "tasks": len(self.tasks),
                   "eta_s": elapsed / self.done_trials * remaining if self.done_trials else None})
        self.measurer.task = (t.flops, t.bytes)
        cm = self.cost_models.setdefault(t.name, ms.cost_model.XGBModel(num_tuning_cores=self.measurer.parallel)
                                         if _has_xgboost() else "random")
        # GPU families (OpenCL, CUDA) share meta_schedule's GPU rules (thread binding, shared memory)
        space = (ms.space_generator.PostOrderApply(sch_rules="cuda", postprocs="cuda", mutator_probs="cuda")
                 if t.gpu else "post-order-apply")
        ctx = ms.TuneContext(mod=_module(t), target=self.target, space_generator=space,
                             search_strategy=ms.search_strategy.EvolutionarySearch(
                                 population_size=256, init_min_unmeasured=32, genetic_num_iters=2),
                             task_name=t.name, rand_state=self.seed + rec["trials"], num_threads=2,
                             logger=logging.getLogger("tvm.s_tir.meta_schedule")).clone()
        with tempfile.TemporaryDirectory(prefix="lfmc-tune-") as wd:
            ms.tune_tasks(tasks=[ctx], task_weights=[1.0], work_dir=wd, max_trials_global=n,
                          num_trials_per_iter=n, builder=self.measurer.builder,
                          runner=self.measurer.runner_with_timeout(rec["default_s"]),
                          database=self.db.ms, cost_model=cm, task_scheduler="round-robin")
        rec["trials"] += n
        self.done_trials += n
        self.report.trials += n
        best = self.db.best(_module(t))
        if best is not None:
            rec["best_s"] = best[1]
        rec["done"] = rec["trials"] >= self.allotted[t.name]
        rec["rounds"] = rec.get("rounds", 0) + 1
        rec.setdefault("history", []).append([rec["trials"], rec["best_s"]])
        if rec["rounds"] >= GIVE_UP_ROUNDS and not self.db.near_default(_module(t), rec["default_s"]):
            self.give_up(t)
        self.db.save()

    def give_up(self, t: Task) -> None:
        """The search's space does not reach the default schedule (e.g. the SwiGLU kernels' paired reduction,
        which meta_schedule cannot tile): the task's remaining trials go to its entry's other open tasks."""
        rec = self.info(t)
        rec["gave_up"] = True
        rec["done"] = True
        spare = self.allotted[t.name] - rec["trials"]
        self.allotted[t.name] = rec["trials"]
        peers = [x for x in self.tasks if x.entry == t.entry and not self.info(x).get("gave_up")
                 and self.info(x)["trials"] < self.allotted[x.name]]
        for i, x in enumerate(peers):
            self.allotted[x.name] += spare // len(peers) + (1 if i < spare % len(peers) else 0)

    def finish(self) -> TuneReport:
        self.report.seconds = time.perf_counter() - self.t_start
        for t in self.tasks:
            r = self.info(t)
            self.report.tasks.append({
                "name": t.name, "key": self.keys[t.name], "entry": t.entry, "trials": r["trials"],
                "gave_up": bool(r.get("gave_up")), "default_s": r["default_s"], "best_s": r["best_s"],
                "done": r["done"], "share": self.share[t.name], "history": r.get("history", []),
                "speedup": (r["default_s"] / r["best_s"]) if r["best_s"] else None})
        self.emit({"phase": "end", "report": self.report})
        return self.report


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
        low.kernels[t.name] = KernelSpec(_fixed, {"func": sch.mod["main"]})
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
