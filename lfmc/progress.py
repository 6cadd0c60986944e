"""Progress of long steps (tracing, weight conversion, kernel builds, tuning, calibration) in one place.

Library code opens a :func:`task` and updates it; how it shows is decided once by the CLI (:func:`configure`):
``"auto"`` draws a tqdm bar on stderr when stderr is a terminal and otherwise prints a line every 30 s and one
when a task that took over a second ends (readable in CI logs); ``"quiet"`` (``--quiet`` / ``--json``) shows nothing. Used as a
library, lfmc is quiet unless configured. Progress never goes to stdout, which belongs to results.
"""
from __future__ import annotations

import sys
import time

MODES = ("auto", "quiet")
LINE_EVERY_S = 30.0
_mode = "quiet"


def configure(mode: str) -> None:
    """``auto`` or ``quiet`` for every task opened from now on."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {MODES}")
    _mode = mode


class Task:
    """One step with a known number of units; ``update`` advances it. Use it in a ``with`` block, or call
    ``close`` (an unclosed task closes when it is garbage collected, e.g. after an error)."""

    def __init__(self, desc: str, total: int, unit: str = "it"):
        self.desc, self.total, self.unit = desc, int(total), unit
        self.done = 0
        self.closed = False
        self.t0 = self._last = time.perf_counter()
        self._bar = None
        if _mode == "auto" and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=sys.stderr, leave=True,
                                 dynamic_ncols=True, mininterval=0.2)
            except ImportError:                         # no tqdm: the end-of-task line only
                pass

    def update(self, n: int = 1, note: str | None = None) -> None:
        self.done += n
        if self._bar is not None:
            if note is not None:
                self._bar.set_postfix_str(note[:60], refresh=False)
            self._bar.update(n)
        elif _mode == "auto" and time.perf_counter() - self._last > LINE_EVERY_S:
            self._last = time.perf_counter()                 # not a terminal (a CI log): a line now and then
            print(f"  {self.desc}: {self.done}/{self.total} {self.unit}" + (f" ({note})" if note else ""),
                  file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text[:60])

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        dt = time.perf_counter() - self.t0
        if self._bar is not None:
            self._bar.close()
        elif _mode == "auto" and dt > 1.0:
            print(f"  {self.desc}: {self.done}/{self.total} {self.unit} in {dt:.1f} s", file=sys.stderr, flush=True)

    def __enter__(self) -> "Task":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:                               # noqa: BLE001  interpreter shutdown
            pass


task = Task   # ``with task("building kernels", n, "kernel") as t: ... t.update()``
