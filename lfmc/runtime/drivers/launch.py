"""Launch tables of GPU kernels (written by lfmc's GPU build), evaluated without TVM.

A table entry says, for one plan kernel, which device functions to launch in order, with which arguments (a
kernel parameter by index, a temporary buffer, or an integer expression) and what grid / block sizes, the sizes
being expressions of the symbolic shapes (``n``, ``S``, ...) and scalar parameters. Expressions use only
integers, names, ``+ - * // %`` and ``min``/``max``; they are checked once and compiled to Python code.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import RuntimeLoadError

SCALAR = {"int32": np.int32, "int64": np.int64, "uint32": np.uint32}


def read_device_library(path: Path, api: str | None = None) -> dict[str, Any]:
    """A GPU kernel library (``kernels/device.json``: api, source, launch table), checked to be for ``api``
    when given. Shared by the drivers and ``lfmc verify``."""
    try:
        lib = json.loads(Path(path).read_text())
        lib["source"], lib["table"], lib["api"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RuntimeLoadError(f"{path}: not a device kernel library ({type(e).__name__}: {e})") from None
    if api is not None and lib["api"] != api:
        raise RuntimeLoadError(f"{path}: kernels for {lib['api']!r}, not {api}")
    return lib


_OK = (ast.Expression, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod, ast.Name, ast.Load,
       ast.Constant, ast.Call, ast.UnaryOp, ast.USub)


def compile_expr(text: str, names: set[str]) -> Callable[[dict[str, int]], int]:
    """A checked integer expression as a function of an environment of names."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise RuntimeLoadError(f"launch table: bad expression {text!r}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _OK):
            raise RuntimeLoadError(f"launch table: {type(node).__name__} not allowed in {text!r}")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in ("min", "max")):
            raise RuntimeLoadError(f"launch table: only min/max calls are allowed in {text!r}")
        if isinstance(node, ast.Name) and node.id not in names and node.id not in ("min", "max"):
            raise RuntimeLoadError(f"launch table: unknown name {node.id!r} in {text!r}")
        if isinstance(node, ast.Constant) and not isinstance(node.value, int):
            raise RuntimeLoadError(f"launch table: non-integer constant in {text!r}")
    code = compile(tree, "<launch>", "eval")
    return lambda env: int(eval(code, {"__builtins__": {}, "min": min, "max": max}, env))  # noqa: S307


class LaunchSpec:
    """One plan kernel's device launches, with its expressions compiled."""

    def __init__(self, name: str, spec: dict[str, Any]):
        try:
            self.name = name
            self.nparams = int(spec["params"])
            self.shape_vars = {k: (int(i), int(d)) for k, (i, d) in spec["shape_vars"].items()}
            self.scalars = {k: int(i) for k, i in spec["scalars"].items()}
            names = set(self.shape_vars) | set(self.scalars)
            self.temps = {k: (v["dtype"], compile_expr(v["elems"], names)) for k, v in spec.get("temps", {}).items()}
            self.launches = []
            for L in spec["launches"]:
                args = []
                for a in L["args"]:
                    if a[0] == "buffer":
                        args.append(("buffer", int(a[1])))
                    elif a[0] == "temp":
                        if a[1] not in self.temps:
                            raise RuntimeLoadError(f"launch table of {name}: unknown temporary {a[1]!r}")
                        args.append(("temp", a[1]))
                    elif a[0] == "int":
                        args.append(("int", compile_expr(a[1], names), a[2] if len(a) > 2 else "int32"))
                    else:
                        raise RuntimeLoadError(f"launch table of {name}: unknown argument kind {a[0]!r}")
                self.launches.append((L["function"], args, [compile_expr(g, names) for g in L["grid"]],
                                      [compile_expr(b, names) for b in L["block"]]))
        except (KeyError, TypeError, ValueError) as e:
            raise RuntimeLoadError(f"launch table of {name} is malformed ({type(e).__name__}: {e})") from None

    def arguments(self, largs: list, args: tuple, env: dict[str, int], temps: "TempPool",
                  buffer: Callable[[Any], Any]) -> list:
        """The values of one device launch's arguments: ``buffer(view)`` of a plan argument, a temporary from
        ``temps``, or an integer of the width the kernel declares."""
        out = []
        for a in largs:
            if a[0] == "buffer":
                out.append(buffer(args[a[1]]))
            elif a[0] == "temp":
                out.append(temps.get(a[1], env))
            else:
                out.append(SCALAR.get(a[2], np.int32)(a[1](env)))
        return out

    def env(self, args: tuple, shape_of: Callable[[Any], tuple[int, ...]]) -> dict[str, int]:
        """Values of the symbolic names for one call, from the arguments' shapes and scalars."""
        if len(args) != self.nparams:
            raise RuntimeLoadError(f"kernel {self.name} takes {self.nparams} arguments, got {len(args)}")
        env = {k: shape_of(args[i])[d] for k, (i, d) in self.shape_vars.items()}
        env.update({k: int(args[i]) for k, i in self.scalars.items()})
        return env


class TempPool:
    """One kernel's global temporaries (buffers between its device kernels), kept between calls and grown when
    a call needs more. ``alloc(elements, dtype)`` makes a device buffer."""

    def __init__(self, spec: LaunchSpec, alloc: Callable[[int, str], Any]):
        self.spec, self.alloc = spec, alloc
        self.bufs: dict[str, tuple[int, Any]] = {}

    def get(self, name: str, env: dict[str, int]) -> Any:
        dtype, elems = self.spec.temps[name]
        n = max(1, elems(env))
        have = self.bufs.get(name)
        if have is None or have[0] < n:
            have = self.bufs[name] = (n, self.alloc(n, dtype))
        return have[1]


def verify_library(path: Path, m: dict[str, Any], nargs: dict[str, int]) -> str:
    """A GPU kernel library as data: it parses, is for the manifest's API and has a launch table for every kernel
    the plan launches from it, with as many parameters as the plan passes."""
    d = read_device_library(path)
    table, api, want = d["table"], d["api"], m["target"].get("kind")
    if api != want:
        raise RuntimeLoadError(f"{path.name}: kernels for {api!r}, the manifest's target is {want!r}")
    for k, n in nargs.items():
        if k not in table:
            raise RuntimeLoadError(f"{path.name}: no launch table for kernel {k!r}")
        spec = LaunchSpec(k, table[k])
        if spec.nparams != n:
            raise RuntimeLoadError(f"{path.name}: kernel {k!r} takes {spec.nparams} arguments, the plan passes {n}")
    return f"{api} source + launch table"
