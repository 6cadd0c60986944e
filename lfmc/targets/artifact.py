"""Writing compiled artifacts: a directory with manifest.json, the kernels, params.safetensors, tokenizer.

Written into a temporary directory beside the destination and renamed into place, so an interrupted compile
never leaves a half artifact that loads. The runtime reads this format (``lfmc/runtime/artifact.py``).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..ir.model import write_dir_atomically
from ..paramfile import write_params
from ..plan import SCHEMA_VERSION

MANIFEST, PARAMS, TOKENIZER = "manifest.json", "params.safetensors", "tokenizer.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_artifact(dest: str | os.PathLike, manifest: dict[str, Any], params: dict[str, np.ndarray],
                   write_kernels: Callable[[Path], dict[str, str]], tokenizer: str | None = None) -> Path:
    """Create ``dest`` atomically. ``write_kernels(dir)`` writes the kernel libraries and returns
    kernel name -> file (relative to the artifact)."""
    import lfmc

    def fill(tmp: Path) -> None:
        kernel_files = write_kernels(tmp)
        write_params(tmp / PARAMS, params)        # every tensor 64-byte aligned: the runtime maps the file
        files = [*sorted(set(kernel_files.values())), PARAMS]
        if tokenizer is not None:
            (tmp / TOKENIZER).write_text(tokenizer)
            files.append(TOKENIZER)
        m = dict(manifest)
        m["schema_version"] = SCHEMA_VERSION
        m["lfmc_version"] = lfmc.__version__
        m["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        m["files"] = {f: sha256_file(tmp / f) for f in files}
        m["kernels"] = kernel_files
        (tmp / MANIFEST).write_text(json.dumps(m, indent=1, sort_keys=True) + "\n")

    return write_dir_atomically(dest, fill)
