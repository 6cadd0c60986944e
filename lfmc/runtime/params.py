"""Reading params.safetensors: by mapping the file, or into device-driver buffers one tensor at a time.

The safetensors layout is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
data_offsets) and the raw data. lfmc's writer (lfmc/paramfile.py) puts every tensor at a 64-byte aligned file
offset, the alignment TVM's kernels expect of their buffers. Then a driver whose device memory is this
process's memory (``cpu``, ``wafer``) maps the file instead of reading it (:func:`read_params` with ``mapped``):
the weights are page-cache pages shared by every process that runs the artifact, not a private copy. Other
drivers (and files from older writers, whose tensors may be unaligned) read each tensor with ``readinto`` into
its final buffer: peak memory stays the size of the weights, with no second copy.
"""
from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..paramfile import ALIGN, DTYPES as _DTYPES, PAD_PREFIX
from .errors import RuntimeLoadError


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
    dt = _DTYPES.get(h.get("dtype")) if isinstance(h.get("dtype"), str) else None
    shape, offs = h.get("shape", ()), h.get("data_offsets", (0, -1))
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape) and isinstance(offs, list)
            and len(offs) == 2 and all(type(o) is int for o in offs)):
        raise RuntimeLoadError(f"{path}: parameter {name!r} has a malformed header entry {h!r}"[:300])
    shape = tuple(shape)
    if dt != spec["dtype"] or list(shape) != list(spec["shape"]):
        raise RuntimeLoadError(f"{path}: parameter {name!r} is {h.get('dtype')}{list(shape)}, the plan wants "
                               f"{spec['dtype']}{spec['shape']}")
    start, end = offs
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
    if end - start != nbytes or start < 0 or base + end > size:
        raise RuntimeLoadError(f"{path}: parameter {name!r} has a bad data range (file truncated?)")
    return shape, dt, start, end


def _walk(path: Path, expected: dict[str, dict[str, Any]],
          each: Callable[[Any, str, tuple[int, ...], str, int], None]) -> dict[str, Any]:
    """Open ``path``, check every tensor of ``expected`` against the header and call
    ``each(file, name, shape, dtype, data offset)`` for it; returns the header."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise RuntimeLoadError(f"{path}: cannot open ({e})") from None
    with f:
        size = path.stat().st_size
        header, base = _header(f, path, size)
        for name, spec in expected.items():
            shape, dt, start, _ = _check(path, header, base, size, name, spec)
            each(f, name, shape, dt, base + start)
    return header


def param_header(path: Path, expected: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The safetensors header (without its metadata and filler tensors), every tensor in ``expected`` checked
    (name, dtype, shape, data range) without reading any tensor data."""
    header = _walk(path, expected, lambda *_: None)
    return {k: v for k, v in header.items() if k != "__metadata__" and not k.startswith(PAD_PREFIX)}


def _map(f) -> mmap.mmap | None:
    """A private (copy-on-write) mapping of the whole file, its pages faulted in at once by reading one byte of
    each, so the first step does not fault the weights in. (MAP_POPULATE would break copy-on-write on a writable
    private mapping: an anonymous copy of every page.) None where mapping is not possible."""
    try:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError):
        return None
    if hasattr(m, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
        m.madvise(mmap.MADV_WILLNEED)
    page = mmap.PAGESIZE
    np.frombuffer(m, np.uint8)[::page].max(initial=0)                # read faults map page-cache pages, no copies
    return m


def read_params(path: Path, expected: dict[str, dict[str, Any]],
                alloc: Callable[[tuple[int, ...], str], np.ndarray], mapped: bool = False) -> dict[str, np.ndarray]:
    """name -> host buffer for every tensor in ``expected`` ({name: {shape, dtype}}). With ``mapped``, a tensor
    at a 64-byte aligned offset is a view of a private mapping of the file (copy-on-write: the kernels never
    write parameters; an artifact replaced on disk by a new file renamed over it, as lfmc writes them, leaves the
    mapping as it was, while one overwritten in place would not); any other tensor is read into a buffer from
    ``alloc``."""
    out: dict[str, np.ndarray] = {}
    view: list[mmap.mmap | None] = []

    def read(f, name: str, shape: tuple[int, ...], dt: str, offset: int) -> None:
        if mapped and offset % ALIGN == 0:
            if not view:
                view.append(_map(f))
            if view[0] is not None:
                n = int(np.prod(shape, dtype=np.int64))
                out[name] = np.frombuffer(view[0], dt, n, offset).reshape(shape)
                return
        buf = alloc(shape, dt)
        f.seek(offset)
        if f.readinto(memoryview(buf.reshape(-1)).cast("B")) != buf.nbytes:
            raise RuntimeLoadError(f"{path}: parameter {name!r}: file truncated")
        out[name] = buf

    _walk(path, expected, read)
    return out
