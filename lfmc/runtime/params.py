"""Reading params.safetensors straight into device-driver buffers, one tensor at a time.

The safetensors layout is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
data_offsets) and the raw data. Reading each tensor with ``readinto`` into its final (aligned) buffer keeps peak
memory at the size of the weights, with no second copy and no mapping of the whole file.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import RuntimeLoadError

_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "uint16", "U16": "uint16", "I32": "int32", "I64": "int64",
           "I8": "int8", "U8": "uint8", "F64": "float64"}


def _header(f, path: Path, size: int) -> tuple[dict, int]:
    raw = f.read(8)
    if len(raw) != 8:
        raise RuntimeLoadError(f"{path}: truncated (no header)")
    (hlen,) = struct.unpack("<Q", raw)
    if hlen > min(size - 8, 100 << 20):
        raise RuntimeLoadError(f"{path}: corrupt header length {hlen}")
    try:
        header = json.loads(f.read(hlen))
    except ValueError as e:
        raise RuntimeLoadError(f"{path}: corrupt header ({e})") from None
    if not isinstance(header, dict):
        raise RuntimeLoadError(f"{path}: corrupt header (not an object)")
    return header, 8 + hlen


def _check(path: Path, header: dict, base: int, size: int, name: str,
           spec: dict[str, Any]) -> tuple[tuple[int, ...], str, int, int]:
    """(shape, dtype, start, end) of tensor ``name``, checked against the plan's ``spec`` and the file size."""
    h = header.get(name)
    if not isinstance(h, dict):
        raise RuntimeLoadError(f"{path}: parameter {name!r} is missing")
    dt = _DTYPES.get(h.get("dtype"))
    shape = tuple(h.get("shape", ()))
    if dt != spec["dtype"] or list(shape) != list(spec["shape"]):
        raise RuntimeLoadError(f"{path}: parameter {name!r} is {h.get('dtype')}{list(shape)}, the plan wants "
                               f"{spec['dtype']}{spec['shape']}")
    start, end = h.get("data_offsets", (0, -1))
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
    if end - start != nbytes or start < 0 or base + end > size:
        raise RuntimeLoadError(f"{path}: parameter {name!r} has a bad data range (file truncated?)")
    return shape, dt, start, end


def param_header(path: Path, expected: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The safetensors header, every tensor in ``expected`` checked (name, dtype, shape, data range) without
    reading any tensor data."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise RuntimeLoadError(f"{path}: cannot open ({e})") from None
    with f:
        size = path.stat().st_size
        header, base = _header(f, path, size)
        for name, spec in expected.items():
            _check(path, header, base, size, name, spec)
    return {k: v for k, v in header.items() if k != "__metadata__"}


def read_params(path: Path, expected: dict[str, dict[str, Any]],
                alloc: Callable[[tuple[int, ...], str], np.ndarray]) -> dict[str, np.ndarray]:
    """name -> host buffer (from ``alloc``) for every tensor in ``expected`` ({name: {shape, dtype}})."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise RuntimeLoadError(f"{path}: cannot open ({e})") from None
    with f:
        size = path.stat().st_size
        header, base = _header(f, path, size)
        out: dict[str, np.ndarray] = {}
        for name, spec in expected.items():
            shape, dt, start, end = _check(path, header, base, size, name, spec)
            buf = alloc(shape, dt)
            f.seek(base + start)
            if f.readinto(memoryview(buf.reshape(-1)).cast("B")) != buf.nbytes:
                raise RuntimeLoadError(f"{path}: parameter {name!r}: file truncated")
            out[name] = buf
        return out
