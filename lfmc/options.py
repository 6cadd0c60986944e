"""Compile options: one frozen, validated record of what the user asked a compile for.

Built once (by the CLI or the Python API), handed to the passes (as their options dict), to the target backend
and written to the manifest (``CompileOptions.manifest()``: no absolute paths; a tuning database by the hash of
its records). Imports nothing of lfmc but its error type, so every layer that needs it may read it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from .ir.errors import LfmcError
from .ir.ops import KV_DTYPES  # noqa: F401  (re-exported: the CLI's choices)

QUANT_HEADS = ("auto", "same")
DTYPES = ("f32", "f16", "bf16")
ACT_QUANTS = ("i8", "bf16")
DEFAULT_MAX_CONTEXT = 4096
DEFAULT_PREFILL_CHUNK = 256


@dataclass(frozen=True)
class CompileOptions:
    """What a compile produces, besides the model and the target: weights (``quant`` q8 / q4gG[a] or None;
    ``quant_head``: the token embedding / LM head of a 4-bit scheme in 8-bit groups ("auto", as llama.cpp keeps
    them at 6 bits) or in the scheme itself ("same"),
    ``dtype`` of the unquantized ones), int8 activations (``act_quant``), the KV cache's storage, the pass list
    (None = the target's default pipeline), MoE expert pruning (options of the prune-experts pass), the runtime
    limits, a tuning database (``tuned``) and a profiles file (``profiles``)."""

    quant: str | None = None
    quant_head: str = "auto"
    dtype: str = "f32"
    act_quant: str | None = None
    kv_dtype: str = "f32"
    passes: tuple[str, ...] | None = None
    prune: Mapping[str, Any] | None = field(default=None, hash=False)
    max_batch: int = 8
    max_context: int | None = None
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    tuned: str | None = None
    profiles: str | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (normalizing a frozen record)
        if self.quant in ("", "none", "f32"):
            set_("quant", None)
        if self.act_quant in ("", "none", "f32"):
            set_("act_quant", None)
        if isinstance(self.passes, str):
            set_("passes", tuple(x.strip() for x in self.passes.split(",") if x.strip()))
        elif self.passes is not None:
            set_("passes", tuple(self.passes))
        for k in ("tuned", "profiles"):
            if getattr(self, k) is not None:
                set_(k, os.fspath(getattr(self, k)))
        if self.quant_head not in QUANT_HEADS:
            raise LfmcError(f"--quant-head {self.quant_head!r}: expected one of {', '.join(QUANT_HEADS)}")
        if self.dtype not in DTYPES:
            raise LfmcError(f"--dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.kv_dtype not in KV_DTYPES:
            raise LfmcError(f"--kv-dtype {self.kv_dtype!r}: expected one of {', '.join(KV_DTYPES)}")
        if self.act_quant is not None and self.act_quant not in ACT_QUANTS:
            raise LfmcError(f"unknown activation quantization {self.act_quant!r} (known: none, "
                            f"{', '.join(ACT_QUANTS)})")
        if self.act_quant == "bf16" and self.dtype != "bf16":
            raise LfmcError("--act-quant bf16 needs --dtype bf16 (bf16 activations multiply bf16 weights)")
        for k in ("max_batch", "prefill_chunk"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise LfmcError(f"--max-batch and --prefill-chunk must be at least 1 (--{k.replace('_', '-')} "
                                f"{v!r})")
        if self.max_context is not None and (not isinstance(self.max_context, int) or self.max_context < 1):
            raise LfmcError("--max-context must be at least 1")

    @classmethod
    def from_kwargs(cls, **kw: Any) -> "CompileOptions":
        """Options from keyword arguments, naming any that is not an option."""
        names = {f.name for f in fields(cls)}
        bad = sorted(set(kw) - names)
        if bad:
            raise TypeError(f"unknown compile option(s) {', '.join(bad)} (known: {', '.join(sorted(names))})")
        return cls(**kw)

    def pass_options(self) -> dict[str, Any]:
        """The options dict every pass reads (quantization, dtypes, pruning)."""
        return {"quant": self.quant, "quant_head": self.quant_head, "dtype": self.dtype, "kv_dtype": self.kv_dtype, "act_quant": self.act_quant,
                **dict(self.prune or {})}

    def context(self, max_position_embeddings: int | None) -> tuple[int, int]:
        """(the artifact's max context, the model's max positions): the option, else min(4096, the model's)."""
        mpe = int(max_position_embeddings or DEFAULT_MAX_CONTEXT)
        return int(self.max_context or min(DEFAULT_MAX_CONTEXT, mpe)), mpe

    def manifest(self, passes: Sequence[str]) -> dict[str, Any]:
        """The options as the manifest records them: the pass list as run, pruning without calibration data,
        a tuning database by the hash of its records, no paths of this machine."""
        d = asdict(self)
        d["passes"] = list(passes)
        d["prune"] = {k: v for k, v in (self.prune or {}).items() if k != "calibration"} or None
        d["tuned"] = tree_hash(Path(self.tuned)) if self.tuned else None
        d["profiles"] = tree_hash(Path(self.profiles)) if self.profiles else None
        return d


def tree_hash(path: Path) -> str:
    """sha256 over a file, or over a folder's files (relative names and contents, sorted): what a tuning database
    or a profiles file held, independent of where it lay."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(path) if p != path else p.name).encode() + b"\0")
        h.update(p.read_bytes())
    return "sha256:" + h.hexdigest()
