"""Arm artifacts executed for real: lfmc's runtime in an aarch64 Python under ``qemu-aarch64 -cpu max`` (which
has dotprod, i8mm and bf16), set up by ``setup.sh`` (``make arm-env``) in build/. The host compiles; the emulated
process only loads artifacts and runs them (:mod:`tests.targets.arm.run_jobs`)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
ROOT = REPO / "build" / "arm64-root"
SITE = REPO / "build" / "arm64-site"
RUNNER = Path(__file__).with_name("run_jobs.py")


def missing() -> str | None:
    """Why Arm artifacts cannot run here (None: they can)."""
    if shutil.which("qemu-aarch64") is None:
        return "no qemu-aarch64 (make arm-env: Debian's qemu-user)"
    if not (ROOT / "usr/bin/python3").exists() or not (SITE / ".complete").exists():
        return "no arm64 Python root (make arm-env)"
    return None


def run_jobs(jobs: list[dict], out: Path, cpu: str = "max", timeout: float = 3600) -> list[dict]:
    """Run ``jobs`` ({"artifact", "prompt", "forced"} each) in one emulated process on qemu's ``cpu`` model;
    each job's result: its JSON line (machine, driver, seconds) with "logits": the logits after the prompt and
    after each forced token, or "error": why the runtime refused the artifact."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "PYTHONPATH": f"{SITE}{os.pathsep}{REPO}", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONHOME", None)
    cmd = ["qemu-aarch64", "-cpu", cpu, "-L", str(ROOT), str(ROOT / "usr/bin/python3"), str(RUNNER),
           str(out / "jobs.json"), str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    if r.returncode != 0:
        raise AssertionError(f"the emulated runtime failed ({r.returncode}):\n{r.stderr[-3000:]}")
    res = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(res) == len(jobs), r.stdout[-2000:]
    for i, x in enumerate(res):
        if "error" not in x:
            x["logits"] = np.load(out / f"{i}.npy")
    return res
