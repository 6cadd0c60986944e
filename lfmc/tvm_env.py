"""Importing TVM without paying for torch, and the runtime without the compiler.

tvm_ffi imports torch eagerly when it is installed (a workaround for a Windows symbol clash). That costs seconds,
and torch's thousands of modules in ``sys.modules`` make TVMScript's parser several times slower (it walks them
all, through ``inspect.getmodule``, for every kernel it parses). Shared by the compiler and the runtime's cpu
driver; torch stays importable afterwards for whoever needs it (the torch frontend, PyTorch baselines).

``import tvm`` also loads libtvm_compiler.so (TVM's compiler with LLVM inside: about 220 MiB resident). Running
compiled kernels needs only tvm_ffi (loading modules, tensors) and libtvm_runtime.so (the kernels' thread pool and
workspace: ``TVMBackend*``), which :func:`import_tvm_runtime` loads alone.
"""
from __future__ import annotations

import ctypes
import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any


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


def import_tvm_runtime() -> Any:
    """What running kernels needs of TVM: an object with ``load_module(path)`` and ``from_dlpack(array)``. TVM
    itself where something in this process imported it already (the compiler); else tvm_ffi with
    libtvm_runtime.so loaded beside it (global symbols, which the kernel libraries resolve), not libtvm_compiler."""
    if "tvm" in sys.modules:
        return import_tvm().runtime
    spec = importlib.util.find_spec("tvm")
    lib = Path(next(iter(spec.submodule_search_locations or []), "")) / "lib" / "libtvm_runtime.so" if spec else None
    if lib is None or not lib.is_file():
        return import_tvm().runtime                      # another layout: the whole of TVM
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        import tvm_ffi
    finally:
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    return SimpleNamespace(load_module=tvm_ffi.load_module, from_dlpack=tvm_ffi.from_dlpack)
