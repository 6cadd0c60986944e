"""Weights: seeded random initialization (numpy only, the same on every machine), checks and safetensors I/O."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..sysmem import available_memory
from .errors import WeightsError
from .graph import Graph
from .quant import storage_dtype
from .types import DTYPES

# Parameter roles that scale activations (norm weights): initialized around 1, not 0.
_NORM_ROLES = {("rmsnorm", "weight"), ("attention", "q_norm"), ("attention", "k_norm"), ("layernorm", "weight")}


def _rng(seed: int, name: str) -> np.random.Generator:
    """One generator per parameter, keyed by (seed, name): independent of order and of the other params."""
    h = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(h[:16], "little")))


def random_weights(g: Graph, seed: int = 0, std: float = 0.02) -> dict[str, np.ndarray]:
    """Random float32 weights for every parameter of ``g``: N(0, std), norm weights 1 + N(0, std)."""
    need = weights_nbytes(g)
    avail = available_memory()
    if avail is not None and need > 0.8 * avail:
        raise WeightsError(f"random weights for {g.name} need {need / 2**30:.1f} GiB, but only "
                           f"{avail / 2**30:.1f} GiB of memory is available; import it config-only instead")
    roles = {}
    for n in g.nodes:
        for role, p in n.params.items():
            roles.setdefault(p.name, (n.op, role))
    out: dict[str, np.ndarray] = {}
    for name, p in g.params().items():
        shape = tuple(int(d) for d in p.type.shape)
        w = _rng(seed, name).standard_normal(shape, dtype=np.float32) * np.float32(std)
        if roles[name] in _NORM_ROLES:
            w += np.float32(1.0)
        out[name] = w.astype(DTYPES[p.type.dtype])
    return out


def weights_nbytes(g: Graph) -> int:
    return sum(p.type.nbytes() for p in g.params().values())


def check_weights(g: Graph, weights: dict[str, np.ndarray], source: str = "weights") -> None:
    """Every parameter present with its declared shape and dtype, nothing unexpected."""
    params = g.params()
    for name, p in params.items():
        if name not in weights:
            users = [f"%{n.name}" for n in g.nodes if any(q.name == name for q in n.params.values())]
            raise WeightsError(f"{source}: parameter {name!r} (used by {', '.join(users)}) is missing")
        w = weights[name]
        want_shape = tuple(int(d) for d in p.type.shape)
        if tuple(w.shape) != want_shape:
            raise WeightsError(f"{source}: parameter {name!r} has shape {list(w.shape)}, the IR declares "
                               f"{p.type} ({list(want_shape)})")
        if np.dtype(w.dtype).name != storage_dtype(p.type.dtype):
            raise WeightsError(f"{source}: parameter {name!r} has dtype {w.dtype}, the IR declares {p.type.dtype}")
    extra = sorted(set(weights) - set(params))
    if extra:
        raise WeightsError(f"{source}: tensors not used by the model: {', '.join(extra[:5])}"
                           + (" ..." if len(extra) > 5 else ""))


def save_weights(path: str | os.PathLike, weights: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(path))


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a safetensors file; a truncated or corrupt file is a :class:`WeightsError` naming it."""
    from safetensors.numpy import load_file

    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: weights file not found")
    try:
        return load_file(str(p))
    except Exception as e:  # safetensors raises its own error types and OSError on corrupt files
        raise WeightsError(f"{p}: corrupt or unreadable safetensors file ({type(e).__name__}: {e})") from None
