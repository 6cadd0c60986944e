"""Calibration for expert pruning: how a model routes a calibration text, per MoE layer and expert.

``calibrate`` runs the reference interpreter over the text (in sequences of ``seq_len`` tokens, state reset
between them) and records per layer and expert:

- ``frequency``: the fraction of tokens that route to the expert (a token counts once per expert it picks);
- ``mass``: the routing weight the expert receives, summed over tokens, divided by the tokens;
- ``output_norm``: the norm of the expert's weighted output, summed over tokens, divided by the tokens.

The result is JSON (``lfmc calibrate -o FILE``) that ``lfmc compile --calibration FILE`` hands to the
prune-experts pass. Not a pass itself: it reads a model and data and writes statistics.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..ir.errors import LfmcError
from ..ir.model import Model

FORMAT = "lfmc-calibration"


def text_tokens(model: Model, text: str) -> np.ndarray:
    """Token ids of ``text``: the model's tokenizer, or bytes for a byte-level (256-token) vocabulary."""
    if model.tokenizer is not None:
        from tokenizers import Tokenizer

        return np.asarray(Tokenizer.from_str(model.tokenizer).encode(text).ids, np.int64)
    vocab = model.graph.nodes[-1].type.shape[-1]
    if vocab != 256:
        raise LfmcError(f"the model has no tokenizer and a {vocab}-token vocabulary: calibration text needs one "
                        "(import it from a checkpoint with tokenizer.json)")
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64)


def calibrate(model: Model, tokens: np.ndarray, seq_len: int = 256,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Routing statistics of ``model`` over ``tokens`` (see the module doc)."""
    from ..ir.interp import Interpreter

    if model.weights is None:
        raise LfmcError("calibration runs the model: it needs weights (import with --random-weights or from a "
                        "checkpoint)")
    moes = [n for n in model.graph.nodes if n.op == "moe"]
    if not moes:
        raise LfmcError("the model has no MoE layers to calibrate")
    if len(tokens) == 0:
        raise LfmcError("the calibration data is empty")
    acc = {n.name: {k: np.zeros(n.attrs["num_experts"]) for k in ("frequency", "mass", "output_norm")}
           for n in moes}

    def observe(n, sel, wts, norms) -> None:
        a = acc[n.name]
        np.add.at(a["frequency"], sel.ravel(), 1.0)
        np.add.at(a["mass"], sel.ravel(), wts.ravel().astype(np.float64))
        np.add.at(a["output_norm"], sel.ravel(), norms.ravel().astype(np.float64))

    it = Interpreter(model.graph, model.weights, observe_moe=observe)
    done = 0
    for i in range(0, len(tokens), seq_len):
        chunk = tokens[i:i + seq_len]
        it.run(chunk, it.new_state())
        done += len(chunk)
        if progress:
            progress(done, len(tokens))
    layers = {k: {s: (v / done).tolist() for s, v in a.items()} for k, a in acc.items()}
    return {"format": FORMAT, "model": model.graph.name, "tokens": int(done), "seq_len": int(seq_len),
            "layers": layers}


def load_calibration(path: str | os.PathLike, model: Model | None = None) -> dict[str, Any]:
    """A calibration file, checked (format; with ``model``, its MoE layers and expert counts)."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
        d["format"], d["layers"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LfmcError(f"{p}: not a calibration file ({type(e).__name__}: {e})") from None
    if d["format"] != FORMAT:
        raise LfmcError(f"{p}: not a calibration file (format {d['format']!r})")
    if model is not None:
        for n in model.graph.nodes:
            if n.op != "moe":
                continue
            st = d["layers"].get(n.name)
            if st is None:
                raise LfmcError(f"{p}: no statistics for MoE layer %{n.name} (calibrated on another model?)")
            for k in ("frequency", "mass", "output_norm"):
                if len(st.get(k, [])) != n.attrs["num_experts"]:
                    raise LfmcError(f"{p}: %{n.name} {k} has {len(st.get(k, []))} experts, the model "
                                    f"{n.attrs['num_experts']}")
    return d["layers"]
