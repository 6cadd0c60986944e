"""Tuning databases: meta_schedule's JSON records plus lfmc's own description of what was tuned, where.

Layout of ``--db DIR``: one folder per profile and device, ``DIR/PROFILE/DEVICE-ID/``, holding

- ``database_workload.json`` / ``database_tuning_record.json``: meta_schedule's JSONDatabase (one JSON line per
  workload / measured candidate, appended as measured, so a kill loses at most the line being written);
- ``lfmc-tuning.json``: format, profile, TVM target, the device's identity (what was measured: the CPU model and
  flags for the host, the RPC key for remote devices, the OpenCL device name), and per task its shape, lfmc's
  default schedule's time, the best time and the trials run. Rewritten atomically after every round.

The device id is a hash of the identity, so one folder never mixes two machines.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from ...ir.errors import LfmcError

FORMAT = "lfmc-tuning-db"
VERSION = 1
META = "lfmc-tuning.json"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


def median_secs(run_secs) -> float:
    """The median of a record's measured seconds (meta_schedule keeps them as FloatImms)."""
    secs = sorted(float(s) for s in run_secs)
    return secs[len(secs) // 2]


class TuningDBError(LfmcError):
    """A tuning database that is corrupt, of another format, or for another target or device."""


def host_identity() -> dict[str, Any]:
    """This machine's CPU as tuning sees it: model name, LLVM's CPU name, vector features, cores."""
    from ..host import cpu_features

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    feats = cpu_features()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"kind": "host", "cpu": model or platform.processor(), "mcpu": feats["mcpu"], "cores": cores,
            "features": sorted(k for k in ("avx2", "fma", "avx512", "amx", "avx512_bf16") if feats.get(k))}


def device_id(identity: dict[str, Any]) -> str:
    """A short stable id of a device identity (the database folder's name)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def write_json_atomically(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_lines(path: Path, repair: bool) -> int:
    """Validate a meta_schedule JSON-lines file; a torn last line (a kill mid-write) is cut off when ``repair``.
    Returns the number of good lines; anything else malformed is an error naming file and line."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    lines = data.split(b"\n")
    good = 0
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            if not isinstance(row, list) or len(row) != 2:
                raise ValueError("not a [key, value] pair")
        except (ValueError, UnicodeDecodeError) as e:
            torn = i == len(lines) - 1 and not data.endswith(b"\n")
            if torn and repair:
                with open(path, "r+b") as f:
                    f.truncate(len(data) - len(raw))
                return good
            raise TuningDBError(f"{path}: line {i + 1} is corrupt ({e}); the tuning database cannot be used "
                                f"(delete it to start over)") from None
        good += 1
    return good


class TuningDB:
    """One device's tuning database (a folder; see the module doc)."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = meta
        self._ms = None

    # ------------------------------------------------------------------------------------------ opening
    @staticmethod
    def folder(root: str | os.PathLike, profile: str, identity: dict[str, Any]) -> Path:
        return Path(root) / profile.replace(":", "-") / device_id(identity)

    @classmethod
    def open_for_tuning(cls, root: str | os.PathLike, profile: str, identity: dict[str, Any],
                        target: dict[str, Any]) -> "TuningDB":
        """The database of ``profile`` on the device ``identity`` under ``root``, created if new."""
        path = cls.folder(root, profile, identity)
        if (path / META).exists():
            db = cls.load(path)
            db.check(profile, identity)
            return db
        if Path(root).exists() and (Path(root) / META).exists():
            raise TuningDBError(f"{root} is one device's database; pass its parent folder (the --db root) to tune")
        path.mkdir(parents=True, exist_ok=True)
        import tvm

        meta = {"format": FORMAT, "version": VERSION, "profile": profile, "device": identity,
                "target": target, "tvm_version": tvm.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "tasks": {}}
        db = cls(path, meta)
        db.save()
        return db

    @classmethod
    def load(cls, path: str | os.PathLike, repair: bool = True) -> "TuningDB":
        """Open one device's database folder, checking its format and record files."""
        path = Path(path)
        f = path / META
        if not f.exists():
            raise TuningDBError(f"{path}: not an lfmc tuning database (no {META})")
        try:
            meta = json.loads(f.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise TuningDBError(f"{f}: corrupt ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise TuningDBError(f"{f}: not an lfmc tuning database (format {meta.get('format') if isinstance(meta, dict) else None!r})")
        if meta.get("version") != VERSION:
            raise TuningDBError(f"{f}: database version {meta.get('version')!r}; this lfmc reads version {VERSION}")
        for k in ("profile", "device", "target", "tasks"):
            if k not in meta:
                raise TuningDBError(f"{f}: corrupt (no {k!r})")
        n_w = _check_lines(path / WORKLOADS, repair)
        n_r = _check_lines(path / RECORDS, repair)
        if n_r and not n_w:
            raise TuningDBError(f"{path}: tuning records without workloads: the database is corrupt")
        return cls(path, meta)

    @classmethod
    def resolve(cls, path: str | os.PathLike, profile: str, identity: dict[str, Any] | None) -> "TuningDB":
        """A database for compiling ``profile``: ``path`` is one device's folder, or a ``--db`` root holding one
        folder for the profile (the one of ``identity`` when given and present)."""
        p = Path(path)
        if not p.exists():
            raise TuningDBError(f"tuning database {p} does not exist")
        if (p / META).exists():
            db = cls.load(p)
        else:
            base = p / profile.replace(":", "-")
            cands = sorted(d for d in base.glob("*") if (d / META).exists()) if base.is_dir() else []
            if not cands:
                have = sorted(d.name for d in p.iterdir() if d.is_dir())
                raise TuningDBError(f"{p}: no tuning database for profile {profile!r} (it has: "
                                    f"{', '.join(have) or 'nothing'})")
            if identity is not None and (base / device_id(identity)).exists():
                db = cls.load(base / device_id(identity))
            elif len(cands) == 1:
                db = cls.load(cands[0])
            else:
                raise TuningDBError(f"{p}: {len(cands)} devices were tuned for {profile!r} "
                                    f"({', '.join(d.name for d in cands)}): pass one device's folder")
        db.check(profile, identity)
        return db

    def check(self, profile: str, identity: dict[str, Any] | None) -> None:
        """Refuse a database tuned for another profile, or (when ``identity`` is known) on another device."""
        if self.meta["profile"] != profile:
            raise TuningDBError(f"{self.path}: tuned for profile {self.meta['profile']!r}, not {profile!r}")
        if identity is not None and self.meta["device"].get("kind") == identity.get("kind") == "host" \
                and self.meta["device"] != identity:
            raise TuningDBError(f"{self.path}: tuned on another CPU ({self.meta['device'].get('cpu')!r}, "
                                f"{self.meta['device'].get('cores')} cores) than this one "
                                f"({identity.get('cpu')!r}, {identity.get('cores')} cores): tune here")

    # ------------------------------------------------------------------------------------------ records
    @property
    def ms(self):
        """meta_schedule's JSONDatabase over this folder."""
        if self._ms is None:
            from tvm.s_tir import meta_schedule as ms

            try:
                self._ms = ms.database.JSONDatabase(path_workload=str(self.path / WORKLOADS),
                                                    path_tuning_record=str(self.path / RECORDS),
                                                    module_equality="structural")
            except Exception as e:  # noqa: BLE001  (TVM raises its own error types)
                raise TuningDBError(f"{self.path}: meta_schedule cannot read the records: "
                                    f"{str(e).strip().splitlines()[-1]}") from None
        return self._ms

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        return self.meta["tasks"]

    def save(self) -> None:
        self.meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json_atomically(self.path / META, self.meta)

    def best(self, workload) -> tuple[Any, float] | None:
        """The fastest measured record of ``workload`` (an IRModule) and its median seconds, or None."""
        db = self.ms
        if not db.has_workload(workload):
            return None
        recs = db.get_top_k(db.commit_workload(workload), 1)
        if not recs or not recs[0].run_secs:
            return None
        return recs[0], median_secs(recs[0].run_secs)

    def near_default(self, workload, default_s: float, factor: float = 2.0) -> bool:
        """Whether some searched candidate of ``workload`` ran within ``factor`` of the default schedule's time
        (the default's own record excluded)."""
        db = self.ms
        if not db.has_workload(workload):
            return False
        for rec in db.get_top_k(db.commit_workload(workload), 64):
            if not rec.run_secs:
                continue
            med = median_secs(rec.run_secs)
            if med != default_s and med <= factor * default_s:
                return True
        return False
