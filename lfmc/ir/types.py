"""Tensor types of the IR: a dtype and a shape of integers and symbolic dimensions.

Symbolic dimensions: ``T`` is the number of tokens in one call (the prefill length, or 1 for decode), ``ctx``
is the number of tokens of context a sequence has seen (a KV cache grows along it), ``ring`` is the number of
slots of a sliding-window attention's ring of keys (fixed when an artifact is loaded: the window plus the
prefill chunk, :func:`lfmc.plan.ring_slots`; constant in the context length). In a vision graph ``T`` counts one image's patches and ``M`` the image tokens
they merge into (T / factor^2, after a pixel unshuffle).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DTYPES: dict[str, str] = {
    "f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64",
    "i64": "int64", "i32": "int32", "i8": "int8", "u8": "uint8", "i4": "int4", "u4": "uint4", "bool": "bool",
}
DTYPE_BITS: dict[str, int] = {"f32": 32, "f16": 16, "bf16": 16, "f64": 64, "i64": 64, "i32": 32, "i8": 8,
                              "u8": 8, "i4": 4, "u4": 4, "bool": 8}
SYMBOLS = ("T", "ctx", "ring", "M")  # tokens in this call, tokens of context seen so far, ring slots, merged image tokens
Dim = int | str


@dataclass(frozen=True)
class TensorType:
    """A tensor type such as ``f32[T, 64]``."""

    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r} (known: {', '.join(DTYPES)})")

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"

    @property
    def symbolic(self) -> tuple[str, ...]:
        return tuple(d for d in self.shape if isinstance(d, str))

    def numel(self, **dims: int) -> int:
        """Element count, with symbolic dims bound by ``dims`` (e.g. ``ctx=1``)."""
        n = 1
        for d in self.shape:
            n *= dims[d] if isinstance(d, str) else d
        return n

    def nbytes(self, **dims: int) -> int:
        return (self.numel(**dims) * DTYPE_BITS[self.dtype] + 7) // 8

    def concrete(self) -> bool:
        return not self.symbolic


def dtype_of_numpy(dt: np.dtype) -> str:
    """The IR dtype name of a numpy dtype."""
    name = np.dtype(dt).name
    for k, v in DTYPES.items():
        if v == name:
            return k
    raise ValueError(f"no IR dtype for numpy dtype {name}")


def f32(*shape: Dim) -> TensorType:
    return TensorType("f32", tuple(shape))
