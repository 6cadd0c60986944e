"""The build cache: compiled kernels kept by content hash, so that a recompile rebuilds only what changed.

Code generation is most of a compile's time (LLVM and a link per CPU kernel, half a second each; Metal's or
ROCm's toolchains for GPUs), and the same kernels recur across models, precisions and compiles. An entry's key
hashes everything its bytes depend on: the target, the TVM and lfmc versions, the build's format tag, the
kernel's name (its symbol) and either its TIR as TVMScript or, for lfmc's own kernel makers, the maker, its
arguments and the makers' source files (:func:`kernel_key`). Entries live in ``LFMC_CACHE`` (default
``~/.cache/lfmc``), one folder per kind (``cpu``: a shared library per kernel; ``device``: a GPU module);
``LFMC_CACHE=`` (empty) turns the cache off. Writes go through a temporary file and a rename, so a killed
compile never leaves a torn entry, and every entry carries its checksum (a damaged one is rebuilt); a read-only
or full cache is skipped, never an error. Each folder is kept under ``LFMC_CACHE_MAX_MB`` (default 2048) by
removing the entries used longest ago.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable

DEFAULT_MAX_MB = 2048
HITS = {"n": 0}                            # entries served by get() in this process (compile logs the count)
MAGIC = b"lfmc-cache 1\n"                  # then the payload's SHA-256 (32 bytes), then the payload


def cache_dir(kind: str) -> Path | None:
    """The folder of ``kind``'s entries, or None when the cache is off (``LFMC_CACHE=``)."""
    v = os.environ.get("LFMC_CACHE")
    if v == "":
        return None
    return (Path(v) if v else Path.home() / ".cache" / "lfmc") / kind


def cache_key(*parts: str | bytes) -> str:
    """The hex SHA-256 of ``parts`` (each length-prefixed, so that no two sequences collide)."""
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def versions() -> str:
    """The toolchain part of every key: TVM's and lfmc's versions."""
    import tvm

    from .. import __version__

    return f"tvm {tvm.__version__} | lfmc {__version__}"


def target_key(target: Any) -> str:
    """The part of a key that names a TVM target: its exported JSON, keys sorted."""
    import json

    return json.dumps(target.export(), sort_keys=True, default=str)


@functools.lru_cache(maxsize=None)
def maker_sources() -> str:
    """A digest of the source files the kernel makers are written in (what a maker's output depends on besides
    its arguments and TVM): any edit to them changes every maker-keyed entry."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    files = sorted((root / "targets" / "kernels").glob("*.py")) + [root / "targets/knobs.py", root / "ir/quant.py"]
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _canon(v: Any) -> str | None:
    """A canonical text of a maker argument, or None when it is not plain data (then the TIR is hashed)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return f"{type(v).__name__}:{v!r}"
    if isinstance(v, tuple):
        parts = [_canon(x) for x in v]
        return None if None in parts else "(" + ",".join(parts) + ")"   # type: ignore[arg-type]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        parts = [_canon(getattr(v, f.name)) for f in dataclasses.fields(v)]
        return None if None in parts else type(v).__name__ + "(" + ",".join(parts) + ")"  # type: ignore[arg-type]
    return None


def kernel_key(tag: str, target: str, name: str, spec: Any) -> tuple[str, Any]:
    """The cache key of kernel ``name`` made by ``spec`` (a :class:`~lfmc.targets.lower.KernelSpec`) for
    ``target`` (its JSON), and the PrimFunc when it had to be built for the key. A maker of lfmc's kernel
    library with plain arguments is keyed by its name, arguments and :func:`maker_sources`, so that a cache hit
    skips even parsing the kernel's TVMScript; anything else (a tuned schedule) by its TIR."""
    args = _canon(tuple(sorted(spec.kw.items())))
    maker = spec.maker_name
    if args is not None and maker.startswith("make_"):
        return cache_key(tag, versions(), target, name, maker, args, maker_sources()), None
    func = spec.build(name)
    return cache_key(tag, versions(), target, name, "tir", func.script()), func


def get(kind: str, key: str, suffix: str) -> bytes | None:
    """The bytes of entry ``key`` + ``suffix``, or None (missing, unreadable, damaged, or the cache is off). A
    hit marks the entry as recently used; a damaged one (its checksum does not match) is removed."""
    d = cache_dir(kind)
    if d is None:
        return None
    p = d / f"{key}{suffix}"
    try:
        raw = p.read_bytes()
    except OSError:
        return None
    data = raw[len(MAGIC) + 32:]
    if raw[:len(MAGIC)] != MAGIC or raw[len(MAGIC):len(MAGIC) + 32] != hashlib.sha256(data).digest():
        try:
            p.unlink()
        except OSError:
            pass
        return None
    try:
        os.utime(p)
    except OSError:
        pass
    HITS["n"] += 1
    return data


def put(kind: str, key: str, entries: dict[str, bytes]) -> None:
    """Store ``{suffix: bytes}`` under ``key``, in that order, each file written whole or not at all and
    checksummed (what :func:`get` verifies)."""
    d = cache_dir(kind)
    if d is None:
        return
    try:
        d.mkdir(parents=True, exist_ok=True)
        for suffix, data in entries.items():
            tmp = d / f".{key}{suffix}.{os.getpid()}.tmp"
            tmp.write_bytes(MAGIC + hashlib.sha256(data).digest() + data)
            os.replace(tmp, d / f"{key}{suffix}")
    except OSError:
        pass                                   # a read-only or full cache is not the compile's problem


def build_file(kind: str, key: str, suffix: str, out: Path, build: Callable[[Path], None]) -> bool:
    """Write entry ``key`` + ``suffix`` to ``out``; on a miss ``build(out)`` writes it and the cache keeps a copy.
    Returns whether it was a hit."""
    data = get(kind, key, suffix)
    if data is not None:
        out.write_bytes(data)
        return True
    build(out)
    put(kind, key, {suffix: out.read_bytes()})
    return False


def trim(kind: str, max_bytes: int | None = None) -> list[Path]:
    """Remove the least recently used entries of ``kind`` until its folder holds at most ``max_bytes`` (default
    ``LFMC_CACHE_MAX_MB``); returns what was removed. Builders call it once per build."""
    d = cache_dir(kind)
    if d is None or not d.is_dir():
        return []
    if max_bytes is None:
        try:
            max_bytes = int(float(os.environ.get("LFMC_CACHE_MAX_MB", DEFAULT_MAX_MB)) * 2**20)
        except ValueError:
            max_bytes = DEFAULT_MAX_MB * 2**20
    files, stale = [], time.time() - 3600
    for p in d.iterdir():
        try:
            st = p.stat()
            if p.name.startswith("."):               # a killed writer's temporary file
                if p.name.endswith(".tmp") and st.st_mtime < stale:
                    p.unlink()
                continue
        except OSError:
            continue
        files.append((st.st_mtime, st.st_size, p))
    total = sum(s for _, s, _ in files)
    removed = []
    for _, size, p in sorted(files):
        if total <= max_bytes:
            break
        try:
            p.unlink()
        except OSError:
            continue
        total -= size
        removed.append(p)
    return removed

