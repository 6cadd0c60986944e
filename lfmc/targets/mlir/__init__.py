"""MLIR export: the IR as ``lfm`` dialect ops (generic form), or lowered to func / linalg / arith / math / tensor.

Both forms are checked by the upstream MLIR Python bindings (parsed, verified, printed by MLIR itself); the
bindings come with ``iree-base-compiler`` (``pip install 'lfmc[mlir]'``; the package index's
``mlir-python-bindings`` is an empty placeholder). The linalg form can be compiled by IREE for ``llvm-cpu`` and
run (``iree-base-runtime``), an independent second path for the interpreter's numbers.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...ir.errors import LfmcError
from ...ir.graph import Graph

FORMS = ("lfm", "linalg")
_HINT = "install the MLIR extra: pip install 'lfmc[mlir]' (iree-base-compiler ships the upstream MLIR bindings)"


def bindings() -> tuple[Any, Any]:
    """(ir, func) of the upstream MLIR Python bindings, or an LfmcError saying how to get them."""
    try:
        from iree.compiler import ir
        from iree.compiler.dialects import func
    except ImportError as e:
        raise LfmcError(f"MLIR export needs the MLIR Python bindings ({e}): {_HINT}") from None
    return ir, func


def verify(text: str, where: str = "<mlir>") -> str:
    """Parse and verify ``text`` with MLIR; returns MLIR's own printing of it."""
    ir, _ = bindings()
    with ir.Context() as ctx:
        ctx.allow_unregistered_dialects = True
        try:
            m = ir.Module.parse(text)
        except Exception as e:                         # noqa: BLE001  MLIRError carries the diagnostics
            raise LfmcError(f"{where}: MLIR does not parse it: {e}") from None
        if not m.operation.verify():
            raise LfmcError(f"{where}: MLIR does not verify it")
        return str(m)


def export_mlir(g: Graph, lower: str | None = None) -> str:
    """The graph as verified MLIR text: ``lfm`` dialect ops, or with ``lower="linalg"`` linalg on tensors."""
    if lower not in (None, "lfm", "linalg"):
        raise LfmcError(f"unknown --lower {lower!r} (choose from {', '.join(FORMS)})")
    ir, func = bindings()
    if lower == "linalg":
        from .linalg import lower_linalg

        return verify(lower_linalg(g), f"{g.name} (linalg)")
    from .dialect import build_dialect_module

    with ir.Context() as ctx, ir.Location.unknown():
        ctx.allow_unregistered_dialects = True
        m = build_dialect_module(g, ir, func)
        if not m.operation.verify():
            raise LfmcError(f"{g.name}: the lfm dialect module does not verify")
        text = str(m)
    return verify(text, f"{g.name} (lfm dialect)")


def compile_iree(text: str, cpu: str = "host") -> bytes:
    """IREE VM flatbuffer of a linalg-form module for ``llvm-cpu``."""
    try:
        import iree.compiler as ic
    except ImportError as e:
        raise LfmcError(f"running the linalg form needs IREE ({e}): {_HINT}") from None
    try:
        return ic.compile_str(text, target_backends=["llvm-cpu"], extra_args=[f"--iree-llvmcpu-target-cpu={cpu}"])
    except Exception as e:                             # noqa: BLE001  CompilerToolError carries IREE's diagnostics
        raise LfmcError(f"IREE could not compile the module: {str(e)[:2000]}") from None


class IreeForward:
    """``@forward`` of a compiled linalg-form module, bound to the model's weights (in parameter order)."""

    def __init__(self, vmfb: bytes, g: Graph, weights: dict[str, np.ndarray], driver: str = "local-task"):
        try:
            import iree.runtime as rt
        except ImportError as e:
            raise LfmcError(f"running the linalg form needs iree-base-runtime ({e}): {_HINT}") from None
        self._ctx = rt.SystemContext(config=rt.Config(driver))
        self._ctx.add_vm_module(rt.VmModule.copy_buffer(self._ctx.instance, vmfb))
        missing = [p for p in g.params() if p not in weights]
        if missing:
            raise LfmcError(f"weights missing for the MLIR module: {missing[:5]}")
        self._args = [np.ascontiguousarray(weights[p], np.float32) for p in g.params()]
        self._fn = self._ctx.modules.module["forward"]

    def __call__(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits [T, V] of ``tokens`` from an empty state."""
        return np.asarray(self._fn(np.asarray(tokens, np.int64), *self._args).to_host())


__all__ = ["FORMS", "IreeForward", "bindings", "compile_iree", "export_mlir", "verify"]
