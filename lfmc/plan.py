"""The artifact's kernel plan as types that both sides share: the compiler writes it (``lfmc/targets``) and the
runtime reads it (``lfmc/runtime``). Imports nothing of lfmc, so either side may import it.

A plan entry (``prefill``, ``decode``; ``vision`` for a vision-language model's image encoder) is a list of :class:`Launch` es, each a kernel and its :class:`Arg` s. In the
manifest they are plain JSON: a launch ``{"kernel": name, "args": [...], "node": ir_node}``, an argument a short
list (``["slab", name, rows, cols]``, ``["param", name]``, ``["state", name]``, ``["input", name, rows]``,
``["scalar", name]``, ``["const", value]``); :meth:`Launch.from_json` checks that form and says what is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 4      # 2: the target record names its family and backend, the manifest carries "options";
                        # 3: state kind and wafer element "recurrence" (was "recurrent" / "recur");
                        # 4: sliding-window KV state: shape dim "R" (ring slots) and the state's "window"
PLAN_VERSION = 1
ENTRIES = ("prefill", "decode")
# The manifest's ``kernels`` key of a CPU artifact's step runner (a native function that runs a whole step's launches
# in one call; not a plan kernel): lfmc/targets/host/step_runner.c, loaded by the cpu driver.
STEP_RUNNER = "lfmc_run_step"

# rows of a call, rounded up to the row tile, times experts per token; in a vision entry (rows: one image's
# patches) the image tokens they merge into (n / merge) and those rounded up to the row tile
ROW_SPECS = ("n", "np", "nk", "m", "mp")
INPUTS = ("tokens", "slots", "pos", "order")     # int32 per row (order: a vision entry's patch merge order)
SCALARS = ("nb", "slot", "mb", "gh", "gw")   # row blocks of the call; the sequence slot of a prefill; blocks of "mp";
                                             # a vision call's patch grid (rows, columns)
ARG_KINDS = ("slab", "param", "state", "input", "scalar", "const")
STATE_DIMS = ("S", "C", "R")            # state shapes: sequence slots, max context, ring slots of a sliding window


def ring_slots(window: int, prefill_chunk: int, max_context: int) -> int:
    """Slots of a sliding-window attention's ring of keys (position p lives in slot p % slots): the window - 1
    keys before a chunk plus the chunk itself, so that writing a whole chunk's keys before attending never
    overwrites a key that a query of the chunk still needs; at most the context (then the ring never wraps)."""
    return max(1, min(int(window) - 1 + int(prefill_chunk), int(max_context)))


class PlanError(ValueError):
    """A plan that does not follow this format; the message says which part."""


@dataclass(frozen=True)
class Arg:
    """One argument of a launch: an activation slab viewed as ``[rows, cols]``, a packed parameter, a state
    buffer, a per-row int32 input, a per-call scalar, or a constant. ``rows`` is one of :data:`ROW_SPECS` or a
    count."""

    kind: str
    name: Any                                  # a name; the value of a constant
    rows: str | int | None = None
    cols: int | None = None

    @classmethod
    def slab(cls, name: str, rows: str | int, cols: int) -> Arg:
        return cls("slab", name, rows, cols)

    @classmethod
    def param(cls, name: str) -> Arg:
        return cls("param", name)

    @classmethod
    def state(cls, name: str) -> Arg:
        return cls("state", name)

    @classmethod
    def input(cls, name: str, rows: str | int) -> Arg:
        return cls("input", name, rows)

    @classmethod
    def scalar(cls, name: str) -> Arg:
        return cls("scalar", name)

    @classmethod
    def const(cls, value: int) -> Arg:
        return cls("const", value)

    def to_json(self) -> list:
        if self.kind == "slab":
            return ["slab", self.name, self.rows, self.cols]
        if self.kind == "input":
            return ["input", self.name, self.rows]
        return [self.kind, self.name]

    @classmethod
    def from_json(cls, a: Any) -> Arg:
        """The argument written as ``a``; :class:`PlanError` when it is not one this format knows."""
        if not isinstance(a, list) or len(a) < 2 or a[0] not in ARG_KINDS:
            raise PlanError(f"argument {a!r} is not understood")
        kind, name = a[0], a[1]
        if kind in ("slab", "input") and (len(a) < 3 or not (isinstance(a[2], int) or a[2] in ROW_SPECS)):
            raise PlanError(f"argument {a!r} has no row count")
        if kind == "slab" and (len(a) < 4 or not isinstance(a[3], int)):
            raise PlanError(f"argument {a!r} has no column count")
        if kind == "input" and name not in INPUTS:
            raise PlanError(f"unknown input {name!r}")
        if kind == "scalar" and name not in SCALARS:
            raise PlanError(f"unknown scalar {name!r}")
        if kind in ("slab", "param", "state") and not isinstance(name, str):
            raise PlanError(f"argument {a!r} has no name")
        return cls(kind, name, a[2] if kind in ("slab", "input") else None, a[3] if kind == "slab" else None)


@dataclass(frozen=True)
class Launch:
    """One kernel launch of a plan entry: the kernel's name, its arguments, the IR node it computes (for
    profiles) and, for dense matmuls, the floating-point operations per row of input (for GFLOP/s)."""

    kernel: str
    args: tuple[Arg, ...]
    node: str = ""
    flops_per_row: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kernel": self.kernel, "args": [a.to_json() for a in self.args]}
        if self.node:
            out["node"] = self.node
        if self.flops_per_row:
            out["flops_per_row"] = int(self.flops_per_row)
        return out

    @classmethod
    def from_json(cls, L: Any) -> Launch:
        """The launch written as ``L``; :class:`PlanError` naming the part that is malformed."""
        if not isinstance(L, dict) or not isinstance(L.get("args", []), list):
            raise PlanError("launch is malformed")
        if not isinstance(L.get("kernel"), str):
            raise PlanError("launch names no kernel")
        fl = L.get("flops_per_row")
        if fl is not None and not isinstance(fl, int):
            raise PlanError(f"flops_per_row {fl!r} is not an integer")
        return cls(L["kernel"], tuple(Arg.from_json(a) for a in L.get("args", [])), str(L.get("node", "")), fl)


def launches(plan: dict[str, Any], entry: str) -> list[Launch]:
    """The launches of ``entry`` in a plan (as the manifest holds it)."""
    return [Launch.from_json(L) for L in plan["entries"][entry]]
