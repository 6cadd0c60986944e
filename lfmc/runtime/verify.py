"""``lfmc verify ART``: check an artifact completely without loading or running any of its code.

What it checks: the manifest (schema, version, every file's sha256, no file outside the artifact), the
parameters' safetensors header against the plan (names, dtypes, shapes, data ranges; no tensor data is read),
the plan (every launch names a kernel with a library, every argument refers to a declared slab, parameter,
state or input), and the kernel libraries as data: CPU libraries must be object files for the manifest's
architecture (ELF / Mach-O headers), GPU libraries must parse, name the right API and carry a well-formed launch
table for every kernel the plan launches, with as many parameters as the plan passes. A compiled library is
code: this is what can be known about an artifact before trusting it.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from .artifact import check_plan, load_manifest
from .drivers.launch import LaunchSpec, read_device_library
from .errors import RuntimeLoadError
from .params import param_header

_ELF_MACHINE = {"x86_64": 62, "aarch64": 183}


def _check_object(path: Path, arch: str | None) -> str:
    """The kind of a CPU kernel library, checked against the manifest's architecture."""
    b = path.read_bytes()[:64]
    if b[:4] == b"\x7fELF":
        machine = struct.unpack_from("<H", b, 18)[0]
        want = _ELF_MACHINE.get(arch or "")
        if want is not None and machine != want:
            raise RuntimeLoadError(f"{path.name}: ELF for machine {machine}, the manifest says {arch}")
        return "elf"
    if b[:4] == b"\xcf\xfa\xed\xfe":
        if arch not in ("arm64", None):
            raise RuntimeLoadError(f"{path.name}: a Mach-O library, the manifest says {arch}")
        return "mach-o"
    if b[:8] == b"!<arch>\n":
        return "archive"
    raise RuntimeLoadError(f"{path.name}: not an object file or library (no ELF / Mach-O / ar header)")


def verify_artifact(path: str | Path) -> dict[str, Any]:
    """Check ``path`` as described in the module doc; returns a summary, raises RuntimeLoadError naming the
    first problem found."""
    root = Path(path)
    m = load_manifest(root, verify_hashes=True)
    try:
        return _verify(root, m)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise RuntimeLoadError(f"{root / 'manifest.json'}: malformed ({type(e).__name__}: {e})") from None


def _verify(root: Path, m: dict[str, Any]) -> dict[str, Any]:
    plan = m["plan"]
    # parameters: the header only
    header = param_header(root / "params.safetensors", plan["params"])
    # the plan (load_manifest checked it; the argument counts are needed below)
    kernels = m["kernels"]
    nargs = check_plan(m, root / "manifest.json")
    # tuned variants: a kernel with a library, replacing a launched kernel minus its row-block argument
    for base, by_nb in plan.get("variants", {}).items():
        if base not in nargs or not isinstance(by_nb, dict):
            raise RuntimeLoadError(f"plan variants: {base!r} is not a launched kernel")
        for nb, k in by_nb.items():
            if not str(nb).isdigit() or k not in kernels:
                raise RuntimeLoadError(f"plan variants of {base}: {nb!r} -> {k!r} has no library or no row count")
            nargs[k] = nargs[base] - 1
    # kernel libraries, as data
    t = m["target"]
    libs: dict[str, str] = {}
    for lib in sorted({kernels[k] for k in nargs}):
        p = root / lib
        if t.get("kind") == "wafer":
            from .drivers.wafer import load_program

            prog = load_program(p)
            for k, n in nargs.items():
                if kernels[k] == lib and n != 4 + len(prog["param_order"]):
                    raise RuntimeLoadError(f"{lib}: the mesh program takes {len(prog['param_order'])} parameters, "
                                           f"the plan passes {n - 4}")
            libs[lib] = "mesh program (simulated)"
        elif lib.endswith(".json"):
            d = read_device_library(p)
            table, api = d["table"], d["api"]
            if api != t.get("kind"):
                raise RuntimeLoadError(f"{lib}: kernels for {api!r}, the manifest's target is {t.get('kind')!r}")
            for k, n in nargs.items():
                if kernels[k] != lib:
                    continue
                if k not in table:
                    raise RuntimeLoadError(f"{lib}: no launch table for kernel {k!r}")
                spec = LaunchSpec(k, table[k])
                if spec.nparams != n:
                    raise RuntimeLoadError(f"{lib}: kernel {k!r} takes {spec.nparams} arguments, the plan passes {n}")
            libs[lib] = f"{api} source + launch table"
        else:
            libs[lib] = _check_object(p, t.get("features", {}).get("arch"))
    return {"artifact": str(root), "target": t.get("name"), "driver": t.get("driver"), "files": len(m["files"]),
            "parameters": len(header), "kernels": len(nargs), "libraries": len(libs),
            "library_kinds": sorted(set(libs.values())), "model": m["model"].get("name")}
