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
VISION_FILE = "vision.lfmir"        # a vision-language model's image encoder and projector


@dataclass
class Model:
    """An IR graph, its weights (None when imported config-only) and where it came from. A vision-language
    model also has ``vision``: the graph that turns one image's patches into image-token embeddings (its
    weights live in the same dict, under their own names)."""

    graph: Graph
    weights: dict[str, np.ndarray] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None          # tokenizer.json text, when the source had one
    vision: Graph | None = None

    def graphs(self) -> list[Graph]:
        return [self.graph] + ([self.vision] if self.vision is not None else [])

    def weights_of(self, g: Graph) -> dict[str, np.ndarray]:
        """The weights ``g`` reads (the decoder's or the vision graph's share of :attr:`weights`)."""
        if self.weights is None:
            raise LfmcError(f"model {self.graph.name} has no weights (imported config-only)")
        names = g.params()
        return {k: v for k, v in self.weights.items() if k in names}

    def check(self) -> "Model":
        for g in self.graphs():
            verify(g)
        if self.weights is not None:
            vis = set(self.vision.params()) - set(self.graph.params()) if self.vision is not None else set()
            check_weights(self.graph, {k: v for k, v in self.weights.items() if k not in vis})   # extras reported
            if self.vision is not None:
                check_weights(self.vision, self.weights_of(self.vision))
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
        if m.vision is not None:
            (tmp / VISION_FILE).write_text(print_graph(m.vision))
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
    g = _read_graph(ir, text)
    vis = None
    if (p / VISION_FILE).exists():
        try:
            vtext = (p / VISION_FILE).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{p / VISION_FILE}: unreadable ({e})") from None
        vis = _read_graph(p / VISION_FILE, vtext)
    prov: dict[str, Any] = {}
    if (p / PROVENANCE_FILE).is_file():
        try:
            prov = json.loads((p / PROVENANCE_FILE).read_text())
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{p / PROVENANCE_FILE}: not valid JSON ({e})") from None
    w = None
    if weights and (p / WEIGHTS_FILE).exists():
        w = load_weights(p / WEIGHTS_FILE)
    tok = (p / TOKENIZER_FILE).read_text() if (p / TOKENIZER_FILE).is_file() else None
    m = Model(g, w, prov, tok, vis)
    if w is not None:
        try:
            m.check()
        except LfmcError as e:
            raise type(e)(f"{p / WEIGHTS_FILE}: {e}") from None
    return m


def _read_graph(path: Path, text: str) -> Graph:
    g = parse_graph(text, source=str(path))
    try:
        verify(g)
    except LfmcError as e:
        raise type(e)(f"{path}: {e}") from None
    return g
