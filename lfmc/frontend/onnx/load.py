"""Reading an ONNX file: the graph through ``onnx``, initializers on demand, external data memory-mapped.

Published LFM ONNX files keep their weights in one or more ``model.onnx_data*`` files beside the graph; loading
them through ``onnx.load`` would read every byte into protobuf memory. Here the graph is read without its external
data and each initializer becomes an array only when the lifter asks for it: a ``numpy.memmap`` view of its data
file (checked to lie inside the model's folder and inside the file) or the tensor's own bytes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...ir.errors import LfmcError


def load_graph(path: str | os.PathLike):
    """The ModelProto of ``path`` without its external data (which :class:`Initializers` maps lazily)."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise LfmcError(f"{p}: no such ONNX file")
    try:
        return onnx.load(str(p), load_external_data=False)
    except Exception as e:                                      # noqa: BLE001  protobuf errors of any kind
        raise LfmcError(f"{p}: not a readable ONNX model ({type(e).__name__}: {e})") from None


def _np_dtype(t: int, where: str) -> np.dtype:
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(t))
    except Exception:                                           # noqa: BLE001  an unknown or unsupported type
        raise LfmcError(f"{where}: tensor data type {t} is not supported") from None


class Initializers:
    """name -> array of a graph's initializers, made on first use; external data are memory-mapped."""

    def __init__(self, graph, base: Path | None, source: str):
        self.source, self.base = source, base
        self.protos = {t.name: t for t in graph.initializer}
        self._arrays: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.protos

    def names(self) -> list[str]:
        return list(self.protos)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self.protos[name].dims)

    def get(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = self._read(self.protos[name])
        return self._arrays[name]

    def _read(self, t) -> np.ndarray:
        import onnx
        import onnx.numpy_helper as nh

        where = f"{self.source}: initializer {t.name!r}"
        if t.data_location != onnx.TensorProto.EXTERNAL:
            try:
                return nh.to_array(t)
            except Exception as e:                              # noqa: BLE001  truncated / undefined tensors
                raise LfmcError(f"{where} is unreadable ({type(e).__name__}: {e})") from None
        info = {e.key: e.value for e in t.external_data}
        if self.base is None or "location" not in info:
            raise LfmcError(f"{where} keeps its data in an external file, and no file is given")
        f = (self.base / info["location"]).resolve()
        if self.base.resolve() not in f.parents:
            raise LfmcError(f"{where}: its external data {info['location']!r} lies outside the model's folder")
        if not f.is_file():
            raise LfmcError(f"{where}: its external data file {f.name!r} is missing (expected in {self.base})")
        shape = tuple(int(d) for d in t.dims)
        dt = _np_dtype(t.data_type, where)
        packed = t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
        n = int(np.prod(shape)) if shape else 1
        nbytes = (n + 1) // 2 if packed else n * dt.itemsize
        try:
            off, length = int(info.get("offset", 0)), int(info.get("length", nbytes))
        except ValueError:
            raise LfmcError(f"{where}: external data offset / length are not integers") from None
        size = f.stat().st_size
        if off < 0 or length != nbytes or off + length > size:
            raise LfmcError(f"{where}: external data at offset {off}, {length} bytes, does not fit its shape "
                            f"{list(shape)} ({nbytes} bytes) inside {f.name} ({size} bytes): truncated or corrupt")
        if length == 0:
            return np.zeros(shape, dt)
        if packed:                                           # two 4-bit values a byte, low nibble first
            raw = np.memmap(f, np.uint8, "r", off, (length,))
            vals = np.stack([raw & 15, raw >> 4], -1).reshape(-1)[:n]
            if t.data_type == onnx.TensorProto.INT4:
                vals = vals.astype(np.int8)
                vals[vals > 7] -= 16
            return vals.reshape(shape)
        return np.memmap(f, dt, "r", off, shape if shape else (1,)).reshape(shape)


def io_dims(v) -> list[Any]:
    """The dims of a graph input / output: ints where fixed, names (str) where symbolic, None where unknown."""
    t = v.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
