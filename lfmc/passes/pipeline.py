"""The pass pipeline: named phases of named passes, the IR dumped after each phase on request, the verifier
after every pass (always: it is cheap next to compiling)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from ..ir.errors import LfmcError
from ..ir.model import Model
from ..ir.text import print_graph
from ..ir.verify import verify
from . import (dce, fuse_norm, fuse_residual, fuse_rope, fuse_swiglu, prune_experts, quantize,  # noqa: F401
               quantize_act)  # (registers the passes)
from .base import PHASES, REGISTRY

DEFAULT: dict[str, list[str]] = {
    "canonicalize": ["dce"],
    "fuse": ["fuse-norm", "fuse-swiglu", "fuse-rope", "fuse-residual"],
    "prune": ["prune-experts"],                          # a no-op unless options ask for pruning
    # no-ops unless options name a scheme / int8 activations / 16-bit dtypes
    "quantize": ["quantize", "quantize-activations", "cast-weights", "cast-kv"],
    "plan": [],
}


# GPU families keep the input RMSNorm a kernel of its own: a norm folded into a projection gives it a second
# reduction, which TVM's dlight GEMV rules do not take (it would fall to a three-kernel fallback schedule).
WITHOUT_ON = {"gpu": {"fuse-norm"},
              # the wafer's code generator decides its own fusions (gates on row-end PEs, norms where values live)
              "wafer": {"fuse-norm", "fuse-swiglu", "fuse-rope", "fuse-residual"}}


def default_passes(family: str = "cpu") -> list[str]:
    """The default pipeline, in phase order, for a target family (``cpu`` or ``gpu``)."""
    drop = WITHOUT_ON.get(family, set())
    return [p for ph in PHASES for p in DEFAULT[ph] if p not in drop]


def resolve(names: Sequence[str] | str | None, family: str = "cpu") -> list[str]:
    """Pass names from a list or a comma-separated string; ``None`` = the family's default pipeline,
    ``""`` = none."""
    if names is None:
        return default_passes(family)
    if isinstance(names, str):
        names = [x.strip() for x in names.split(",") if x.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise LfmcError(f"unknown pass(es) {', '.join(unknown)} (known: {', '.join(sorted(REGISTRY))})")
    return list(names)


def run_pipeline(model: Model, passes: Sequence[str] | str | None = None, options: dict[str, Any] | None = None,
                 dump_dir: str | Path | None = None, log: Callable[[str], None] | None = None,
                 family: str = "cpu") -> Model:
    """Run ``passes`` (default pipeline when None) phase by phase. With ``dump_dir``, writes
    ``NN-PHASE.lfmir`` after every phase (``00-input.lfmir`` first)."""
    names = resolve(passes, family)
    options = options or {}
    dump = Path(dump_dir) if dump_dir else None
    if dump:
        dump.mkdir(parents=True, exist_ok=True)
        (dump / "00-input.lfmir").write_text(print_graph(model.graph))
    for i, phase in enumerate(PHASES, 1):
        for name in [n for n in names if REGISTRY[n].phase == phase]:
            model = REGISTRY[name].run(model, options)
            try:
                verify(model.graph)
            except LfmcError as e:
                raise LfmcError(f"pass {name} produced invalid IR: {e}") from None
            if log:
                log(f"pass {name} ({phase})")
        if dump:
            (dump / f"{i:02d}-{phase}.lfmir").write_text(print_graph(model.graph))
    return model


def describe() -> list[tuple[str, str, str]]:
    """(phase, name, doc) of every registered pass, in pipeline order."""
    return [(p.phase, p.name, p.doc) for ph in PHASES for p in REGISTRY.values() if p.phase == ph]
