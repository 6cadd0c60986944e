"""The pass pipeline: named phases of named passes, the IR dumped after each phase on request, the verifier
after every pass (always: it is cheap next to compiling)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Collection, Sequence

from ..ir.errors import LfmcError
from ..ir.model import Model
from ..ir.text import print_graph
from ..ir.verify import verify
from . import (dce, fuse_norm, fuse_post_norm, fuse_residual, fuse_rope, fuse_swiglu,  # noqa: F401
               prune_experts, quantize, quantize_act)  # (registers the passes)
from .base import PHASES, REGISTRY

DEFAULT: dict[str, list[str]] = {
    "canonicalize": ["dce"],
    "fuse": ["fuse-norm", "fuse-swiglu", "fuse-rope", "fuse-residual", "fuse-post-norm"],
    "prune": ["prune-experts"],                          # a no-op unless options ask for pruning
    # no-ops unless options name a scheme / int8 activations / 16-bit dtypes
    "quantize": ["quantize", "cast-weights", "quantize-activations", "cast-kv"],
    "plan": [],
}


def default_passes(without: Collection[str] = ()) -> list[str]:
    """The default pipeline, in phase order, less the passes in ``without`` (what a target backend's code
    generator does not want: see ``Backend.without_passes``)."""
    return [p for ph in PHASES for p in DEFAULT[ph] if p not in without]


def resolve(names: Sequence[str] | str | None, without: Collection[str] = ()) -> list[str]:
    """Pass names from a list or a comma-separated string; ``None`` = the default pipeline less ``without``,
    ``""`` = none."""
    if names is None:
        return default_passes(without)
    if isinstance(names, str):
        names = [x.strip() for x in names.split(",") if x.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise LfmcError(f"unknown pass(es) {', '.join(unknown)} (known: {', '.join(sorted(REGISTRY))})")
    return list(names)


def run_pipeline(model: Model, passes: Sequence[str] | str | None = None, options: dict[str, Any] | None = None,
                 dump_dir: str | Path | None = None, log: Callable[[str], None] | None = None,
                 without: Collection[str] = ()) -> Model:
    """Run ``passes`` (the default pipeline less ``without`` when None) phase by phase. With ``dump_dir``,
    writes ``NN-PHASE.lfmir`` after every phase (``00-input.lfmir`` first)."""
    names = resolve(passes, without)
    options = options or {}
    vision, vision_w = model.vision, None
    if vision is not None:        # the passes rewrite the decoder; a VL model's image encoder is only cast
        vision_w = model.weights_of(vision) if model.weights is not None else None
        keep = set(model.graph.params())
        model = Model(model.graph, None if model.weights is None else
                      {k: v for k, v in model.weights.items() if k in keep or k not in vision_w},
                      model.provenance, model.tokenizer)
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
    if vision is not None:
        if "cast-weights" in names and vision_w is not None:     # the encoder in 16 bits too (--dtype f16 / bf16)
            vm = REGISTRY["cast-weights"].run(Model(vision, vision_w), options)
            vision, vision_w = vm.graph, vm.weights
            verify(vision)
        model = Model(model.graph, None if model.weights is None else {**model.weights, **vision_w},
                      model.provenance, model.tokenizer, vision)
    return model


def describe() -> list[tuple[str, str, str]]:
    """(phase, name, doc) of every registered pass, in pipeline order."""
    return [(p.phase, p.name, p.doc) for ph in PHASES for p in REGISTRY.values() if p.phase == ph]
