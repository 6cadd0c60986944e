"""Importing TVM without paying for torch.

tvm_ffi imports torch eagerly when it is installed (a workaround for a Windows symbol clash). That costs seconds,
and torch's thousands of modules in ``sys.modules`` make TVMScript's parser several times slower (it walks them
all, through ``inspect.getmodule``, for every kernel it parses). Shared by the compiler and the runtime's cpu
driver; torch stays importable afterwards for whoever needs it (the torch frontend, PyTorch baselines).
"""
from __future__ import annotations

import sys
from types import ModuleType


def import_tvm() -> ModuleType:
    """``tvm`` (with ``tvm.runtime``), imported with torch hidden unless torch is loaded already."""
    if "tvm" in sys.modules and "tvm.runtime" in sys.modules:
        return sys.modules["tvm"]
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
    try:
        import tvm
        import tvm.runtime  # noqa: F401
    finally:
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return tvm
