"""The artifact's params.safetensors, as written: every tensor 64-byte aligned in a valid safetensors file.

Shared by the writer (lfmc/targets/artifact.py, lfmc/compile.py) and the runtime's reader
(lfmc/runtime/params.py), so it imports nothing of lfmc and needs numpy alone (a bare device machine that
regenerates an artifact's weights has no safetensors package).
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

ALIGN = 64                     # bytes: the alignment of each tensor's data in the file (and of kernel buffers)
PAD_PREFIX = "__pad__."        # filler tensors that keep the next tensor aligned; never in a plan
DTYPES = {"F32": "float32", "F16": "float16", "BF16": "uint16", "U16": "uint16", "I32": "int32", "I64": "int64",
          "I8": "int8", "U8": "uint8", "F64": "float64"}             # safetensors code -> numpy dtype
_ST_DTYPE = {v: k for k, v in DTYPES.items() if k != "BF16"}


def write_params(path: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
    """Write ``tensors`` (in name order) as a safetensors file whose every tensor starts at a 64-byte aligned
    offset. The format allows no holes: a ``U8`` filler tensor named ``__pad__.N`` stands before any tensor that
    would not start aligned, and the header is padded with spaces so the data starts aligned. The same tensors
    give the same bytes, so an artifact's params regenerated on another machine match the manifest's hash."""
    header: dict[str, Any] = {}
    order: list[tuple[str, np.ndarray | int]] = []
    off = 0
    for k in sorted(tensors):
        if k.startswith(PAD_PREFIX):
            raise ValueError(f"parameter name {k!r} uses the reserved prefix {PAD_PREFIX!r}")
        a = np.ascontiguousarray(tensors[k])
        if str(a.dtype) not in _ST_DTYPE:
            raise ValueError(f"parameter {k!r}: dtype {a.dtype} has no safetensors code here")
        gap = -off % ALIGN
        if gap:
            name = f"{PAD_PREFIX}{len(order)}"
            header[name] = {"dtype": "U8", "shape": [gap], "data_offsets": [off, off + gap]}
            order.append((name, gap))
            off += gap
        header[k] = {"dtype": _ST_DTYPE[str(a.dtype)], "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        order.append((k, a))
        off += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-(8 + len(h)) % ALIGN)              # the data starts 64-byte aligned
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for _, a in order:
            f.write(bytes(a) if isinstance(a, int) else memoryview(a.reshape(-1)).cast("B"))
