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

from pathlib import Path
from typing import Any

from .artifact import check_plan, load_manifest
from .drivers import driver_hook
from .errors import RuntimeLoadError
from .params import param_header


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
    # kernel libraries, as data: each checked by its driver's module (lfmc/runtime/drivers/__init__.py)
    t = m["target"]
    check = driver_hook(str(t.get("driver")), "verify_library")
    if check is None:
        raise RuntimeLoadError(f"the {t.get('driver')!r} driver has no library check")
    libs: dict[str, str] = {}
    for lib in sorted({kernels[k] for k in nargs}):
        libs[lib] = check(root / lib, m, {k: n for k, n in nargs.items() if kernels[k] == lib})
    return {"artifact": str(root), "target": t.get("name"), "driver": t.get("driver"), "files": len(m["files"]),
            "parameters": len(header), "kernels": len(nargs), "libraries": len(libs),
            "library_kinds": sorted(set(libs.values())), "model": m["model"].get("name")}
