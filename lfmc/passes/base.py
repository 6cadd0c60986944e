"""What a pass is: a named, documented IR -> IR transformation in one phase of the pipeline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..ir.model import Model

PHASES = ("canonicalize", "fuse", "prune", "quantize", "plan")


@dataclass(frozen=True)
class Pass:
    name: str
    phase: str
    doc: str
    run: Callable[[Model, dict[str, Any]], Model]      # (model, options) -> model; must not mutate its input


REGISTRY: dict[str, Pass] = {}


def register(name: str, phase: str) -> Callable[[Callable[[Model, dict[str, Any]], Model]], Pass]:
    """Decorator: register ``fn`` as pass ``name`` in ``phase``; its docstring is its documentation."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}")

    def deco(fn: Callable[[Model, dict[str, Any]], Model]) -> Pass:
        p = Pass(name, phase, (fn.__doc__ or "").strip(), fn)
        REGISTRY[name] = p
        return p

    return deco
