"""Tuning tasks: the distinct kernels of a lowered model, each specialized to the shape it runs at.

A task is one matmul kernel at one row-block count ``nb``: 1 for decode (one sequence) and the full prefill chunk
for prefill. Kernels are shared between layers, so a 16-layer model has a handful of distinct tasks; the plan
says how often each runs per call, which with a measured time gives its share of decode (or prefill) time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...plan import Arg, launches
from ..lower import KernelSpec, Lowered

TUNABLE = ("make_matmul",)      # the TE kernels: loop kernels (conv, scan, attention) are written as loops


@dataclass
class Task:
    """One workload to tune: ``kernel`` (the generic kernel's name) specialized at ``nb`` row blocks."""

    kernel: str
    nb: int
    entry: str                  # the entry point that runs it most ("decode" or "prefill")
    spec: KernelSpec
    launches: dict[str, int] = field(default_factory=dict)    # entry -> launches per call
    flops: float = 0.0
    bytes: float = 0.0

    @property
    def name(self) -> str:
        """The variant kernel's name (also the task's name in the database)."""
        return f"{self.kernel}__nb{self.nb}"

    @property
    def gpu(self) -> bool:
        return bool(self.spec.knobs is not None and self.spec.knobs.gpu)

    def workload(self):
        """The unscheduled TensorIR at this shape, named ``main`` (what meta_schedule tunes)."""
        f = self.spec.make("main", nb_static=self.nb, schedule=False)
        return f.without_attr("lfmc.schedule") if f.attrs is not None and "lfmc.schedule" in f.attrs else f

    def default_schedule(self, target):
        """lfmc's default schedule of :meth:`workload` for ``target`` as a traced schedule (its trace is the
        baseline record): lfmc's own on CPUs, dlight's on GPU families."""
        from tvm import s_tir

        if self.gpu:
            from ..gpu.build import dlight_schedule

            sch = dlight_schedule(self.workload(), target)
            if sch is None:
                raise ValueError(f"{self.name}: no dlight rule applies")
            return sch
        from ..kernels import schedule_matmul

        kw = self.spec.kw
        sch = s_tir.Schedule(self.workload())
        schedule_matmul(sch, kw["N"], kw["K"], kw["knobs"], kw["rms_eps"] is not None, kw["swiglu"], kw["quant"],
                        kw.get("panels", 1))
        return sch


def _nb(arg: Arg, n: int, rows: int) -> int:
    """The row-block count of a matmul launch whose last argument is ``arg`` in a call of ``n`` rows."""
    if arg.kind == "const":
        return int(arg.name)
    return -(-n // rows)


def extract_tasks(low: Lowered, prefill_chunk: int, entries: tuple[str, ...] = ("decode", "prefill")) -> list[Task]:
    """The model's tunable kernels at their run shapes (decode: one sequence; prefill: a full chunk), with the
    launches per call of each, ordered by estimated share of time (largest first)."""
    tasks: dict[tuple[str, int], Task] = {}
    for entry in entries:
        n = 1 if entry == "decode" else prefill_chunk
        rows = low.plan["row_tile"][entry]
        for L in launches(low.plan, entry):
            spec = low.kernels[L.kernel]
            if spec.maker_name not in TUNABLE:
                continue
            nb = _nb(L.args[-1], n, rows)
            t = tasks.get((L.kernel, nb))
            if t is None:
                t = tasks[(L.kernel, nb)] = Task(L.kernel, nb, entry, spec)
                kw = spec.kw
                N, Kd, m = kw["N"], kw["K"], nb * kw["knobs"].rows
                t.flops = 2.0 * m * N * Kd
                wbytes = N * Kd * (2 if kw["swiglu"] else 1) * _bytes_per_weight(kw["quant"])
                t.bytes = wbytes + 4.0 * m * (Kd + N)
            t.launches[entry] = t.launches.get(entry, 0) + 1
    out = list(tasks.values())
    for t in out:
        t.entry = max(t.launches, key=lambda e: (t.launches[e], e == "decode"))
    out.sort(key=lambda t: (t.entry != "decode", -estimate_share(t)))
    return out


def _bytes_per_weight(quant: tuple | None) -> float:
    if not quant:
        return 4.0
    return {"f16": 2.0, "bf16": 2.0, "q8": 1.0, "q4": 0.5}[quant[0]]


def estimate_share(t: Task, bandwidth_gbs: float = 20.0, gflops: float = 100.0) -> float:
    """Seconds per call spent in ``t`` before anything is measured: a roofline guess times its launches."""
    one = max(t.bytes / (bandwidth_gbs * 1e9), t.flops / (gflops * 1e9))
    return one * sum(t.launches.values())


def describe(t: Task) -> dict[str, Any]:
    kw = t.spec.kw
    return {"kernel": t.kernel, "nb": t.nb, "rows": t.nb * kw["knobs"].rows, "N": kw["N"], "K": kw["K"],
            "entry": t.entry, "launches": t.launches, "quant": list(kw["quant"]) if kw["quant"] else None,
            "gflop": round(t.flops / 1e9, 6), "mbytes": round(t.bytes / 1e6, 3),
            "fused": [k for k, v in (("norm", kw["rms_eps"] is not None), ("bias", kw["bias"]),
                                     ("residual", kw["accumulate"]), ("swiglu", kw["swiglu"])) if v]}

