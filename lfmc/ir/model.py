"""Saved models: a directory ``NAME.lfm/`` holding ``model.lfmir`` (IR text), ``weights.safetensors``
(absent for config-only imports) and ``provenance.json`` (source, preset, seed, reference config)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import LfmcError, ModelLoadError
from .graph import Graph
from .text import parse_graph, print_graph
from .verify import verify
from .weights import check_weights, load_weights, save_weights

IR_FILE, WEIGHTS_FILE, PROVENANCE_FILE, TOKENIZER_FILE = ("model.lfmir", "weights.safetensors", "provenance.json",
                                                         "tokenizer.json")


@dataclass
class Model:
    """An IR graph, its weights (None when imported config-only) and where it came from."""

    graph: Graph
    weights: dict[str, np.ndarray] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None          # tokenizer.json text, when the source had one

    def check(self) -> "Model":
        verify(self.graph)
        if self.weights is not None:
            check_weights(self.graph, self.weights)
        return self


WRITER_FILE = ".lfmc-writer"     # inside a temporary directory while it is written: "HOST PID" of the writer


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's process: alive
        return True
    return True


def remove_stale_writes(dst: Path) -> list[Path]:
    """Delete the temporary directories that earlier writes of ``dst`` left beside it when their process died
    without cleaning up (SIGKILL, out of memory, power loss): those whose writer, on this host, is gone.
    Another live process's write is left alone. Returns what was removed."""
    host = socket.gethostname()
    removed = []
    for p in dst.parent.glob(f".{dst.name}.*"):
        if p.name == f".{dst.name}.old":
            if dst.exists():                      # killed between the two renames of a replacement
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
            continue
        try:
            whost, pid = (p / WRITER_FILE).read_text().split()
            stale = whost == host and not _pid_alive(int(pid))
        except (OSError, ValueError):             # not one of ours, or its writer is on another host
            continue
        if stale:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def write_dir_atomically(path: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Create directory ``path`` with ``fill(tmp)`` writing its files into a temporary directory beside it,
    then rename it into place (replacing an old one), so that an interrupted write never leaves a half
    directory behind. A write killed outright (no chance to clean up) leaves its temporary directory, marked
    with its process id; the next write of the same path removes it. Shared by saved models and compiled
    artifacts."""
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_writes(dst)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        (tmp / WRITER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        fill(tmp)
        (tmp / WRITER_FILE).unlink()
        old = dst.with_name(f".{dst.name}.old")
        if dst.exists():
            shutil.rmtree(old, ignore_errors=True)
            dst.rename(old)
            tmp.rename(dst)
        else:
            tmp.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def save_model(m: Model, path: str | os.PathLike) -> Path:
    """Write ``m`` to ``path`` atomically."""
    m.check()

    def fill(tmp: Path) -> None:
        (tmp / IR_FILE).write_text(print_graph(m.graph))
        if m.weights is not None:
            save_weights(tmp / WEIGHTS_FILE, m.weights)
        if m.tokenizer is not None:
            (tmp / TOKENIZER_FILE).write_text(m.tokenizer)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(m.provenance, indent=1, sort_keys=True) + "\n")

    return write_dir_atomically(path, fill)


def load_model(path: str | os.PathLike, weights: bool = True) -> Model:
    """Read a saved model; every problem is a :class:`LfmcError` naming the file."""
    p = Path(path)
    if not p.is_dir():
        raise ModelLoadError(f"{p}: not a saved lfmc model directory (expected {IR_FILE} inside NAME.lfm/)")
    ir = p / IR_FILE
    if not ir.is_file():
        raise ModelLoadError(f"{p}: missing {IR_FILE}")
    try:
        text = ir.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{ir}: unreadable ({e})") from None
    g = parse_graph(text, source=str(ir))
    try:
        verify(g)
    except LfmcError as e:
        raise type(e)(f"{ir}: {e}") from None
    prov: dict[str, Any] = {}
    if (p / PROVENANCE_FILE).is_file():
        try:
            prov = json.loads((p / PROVENANCE_FILE).read_text())
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{p / PROVENANCE_FILE}: not valid JSON ({e})") from None
    w = None
    if weights and (p / WEIGHTS_FILE).exists():
        w = load_weights(p / WEIGHTS_FILE)
        check_weights(g, w, source=str(p / WEIGHTS_FILE))
    tok = (p / TOKENIZER_FILE).read_text() if (p / TOKENIZER_FILE).is_file() else None
    return Model(g, w, prov, tok)
