"""Reading compiled artifacts: the manifest, its hashes, and whether this runtime and device can run it.

Loading never unpickles anything; the only code it runs is the kernel library the verified manifest names.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import RuntimeLoadError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def runtime_version() -> str:
    from .. import __version__

    return __version__


def load_manifest(path: str | Path, verify_hashes: bool = True) -> dict[str, Any]:
    """The manifest of artifact ``path``, after checking schema, lfmc version and every file's sha256."""
    root = Path(path)
    mf = root / MANIFEST
    if not mf.is_file():
        raise RuntimeLoadError(f"{root}: not an lfmc artifact (no {MANIFEST})")
    try:
        m = json.loads(mf.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RuntimeLoadError(f"{mf}: unreadable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("schema_version") != SCHEMA_VERSION:
        raise RuntimeLoadError(f"{mf}: artifact schema {m.get('schema_version') if isinstance(m, dict) else '?'}, "
                               f"this runtime reads schema {SCHEMA_VERSION}: recompile with this lfmc")
    if m.get("lfmc_version") != runtime_version():
        raise RuntimeLoadError(f"{mf}: compiled by lfmc {m.get('lfmc_version')}, this is lfmc "
                               f"{runtime_version()}: recompile the model")
    for key in ("files", "plan", "target", "kernels", "limits", "model"):
        if key not in m:
            raise RuntimeLoadError(f"{mf}: manifest has no {key!r}")
    files = m["files"]
    for kname, lib in m["kernels"].items():
        if lib not in files:
            raise RuntimeLoadError(f"{mf}: the library {lib!r} of kernel {kname!r} is not among the hashed files")
    for name, digest in files.items():
        p = (root / name).resolve()
        if root.resolve() not in p.parents:
            raise RuntimeLoadError(f"{mf}: file {name!r} lies outside the artifact; refusing to load it")
        if not p.is_file():
            raise RuntimeLoadError(f"{root}: missing file {name}")
        if verify_hashes and _sha256(p) != digest:
            raise RuntimeLoadError(f"{root}: {name} was altered (sha256 does not match the manifest)")
    return m


def check_device(m: dict[str, Any], driver: str) -> None:
    """Refuse an artifact built for another device API or for CPU features this machine lacks."""
    t = m["target"]
    if t.get("driver") != driver:
        raise RuntimeLoadError(f"artifact was compiled for target {t.get('name')!r} (driver {t.get('driver')!r}), "
                               f"not for the {driver!r} driver")
    if driver == "cpu":
        import platform

        feats = t.get("features", {})
        if feats.get("arch") and feats["arch"] != platform.machine():
            raise RuntimeLoadError(f"artifact was compiled for {feats['arch']} CPUs, this is {platform.machine()}")
        flags = _cpu_flags()
        for want, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("fma", "fma")):
            if feats.get(want) and flags is not None and flag not in flags:
                raise RuntimeLoadError(f"artifact was compiled for CPUs with {flag.upper()} "
                                       f"({feats.get('mcpu')}); this CPU lacks it: recompile here")


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None
