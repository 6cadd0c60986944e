"""The wafer-scale dataflow target (a Cerebras-like mesh, simulated): placement, mesh program, CSL-style source.

``lower_wafer`` places a model on a wafer profile's mesh (:mod:`.place`) and writes its mesh program
(:mod:`.program`); ``write_wafer_files`` puts the program and the CSL-style sources into an artifact;
``wafer_plan`` is the kernel plan the runtime's Engine executes: one launch per entry, which the ``wafer``
driver runs through lfmc's mesh simulator.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...ir.errors import LfmcError
from ...ir.graph import Graph
from ...plan import ENTRIES, PLAN_VERSION, Arg, Launch
from .csl import ROLE_FILES, layout
from .place import Machine, Placement, model_roles, place
from .program import build_program

PROGRAM_FILE = "mesh.json"


def lower_wafer(graph: Graph, weights: dict[str, np.ndarray] | None, prof, max_batch: int, max_context: int,
                kv_dtype: str = "f32") -> tuple[dict[str, Any], dict[str, np.ndarray], Placement]:
    """Place ``graph`` on ``prof``'s mesh; the mesh program, its parameters (none without weights), the placement."""
    if kv_dtype not in ("f32", "f16"):
        raise LfmcError(f"--kv-dtype {kv_dtype}: the wafer target stores KV caches as f32 or f16")
    for p in graph.params().values():
        if p.type.dtype != "f32":
            raise LfmcError(f"the wafer target runs float32 weights; {p.name} is {p.type.dtype} (compile without "
                            "--quant / --dtype for the wafer, from a float model: a GGUF's Q4_0 / Q8_0 blocks are "
                            "kept quantized)")
    m = Machine.from_profile(prof)
    pl = place(graph, m, max_batch, max_context, 2 if kv_dtype == "f16" else 4)
    prog, params = build_program(graph, pl, weights, max_batch, max_context, kv_dtype)
    prog["node_layer"] = model_roles(graph, max_batch, max_context, 4)[1]
    prog["param_order"] = sorted(params) if weights is not None else []
    return prog, params, pl


def wafer_plan(prog: dict[str, Any], params: dict[str, np.ndarray]) -> dict[str, Any]:
    """The Engine's plan: no state or slabs besides the logits; each entry one launch of the simulator."""
    V = int(prog["vocab_size"])
    args = ([Arg.input(k, "n") for k in ("tokens", "slots", "pos")] + [Arg.slab("logits", "n", V)]
            + [Arg.param(k) for k in prog["param_order"]])
    return {"version": PLAN_VERSION, "vocab_size": V, "row_tile": {"prefill": 1, "decode": 1}, "topk": 1,
            "slabs": {"logits": {"dtype": "float32", "uses": [["n", V]]}}, "state": {},
            "params": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in params.items()},
            "entries": {e: [Launch(e, tuple(args)).to_json()] for e in ENTRIES},
            "logits": {"prefill": Arg.slab("logits", 1, V).to_json(), "decode": Arg.slab("logits", "n", V).to_json()}}


def write_wafer_files(d: Path, prog: dict[str, Any]) -> dict[str, str]:
    """mesh.json and csl/*.csl into artifact directory ``d``; kernel name -> file."""
    (d / PROGRAM_FILE).write_text(json.dumps(prog, separators=(",", ":")))
    (d / "csl").mkdir()
    (d / "csl" / "layout.csl").write_text(layout(prog))
    for name, text in ROLE_FILES.items():
        (d / "csl" / name).write_text(text)
    # the CSL-style sources are listed (and so hashed) like kernel files; no plan entry launches them
    return {"prefill": PROGRAM_FILE, "decode": PROGRAM_FILE,
            **{f"csl/{p.name}": f"csl/{p.name}" for p in sorted((d / "csl").glob("*.csl"))}}
