"""`make demo`: import the built-in tiny LFM2 with seeded random weights, show it, check it against transformers."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from .cli import main


def demo(workdir: str | None = None) -> int:
    root = Path(workdir or tempfile.mkdtemp(prefix="lfmc-demo-"))
    model = root / "lfm2-tiny.lfm"
    steps = [
        ["import", "lfm2-tiny", "--random-weights", "--seed", "0", "--init-std", "0.25", "-o", str(model)],
        ["show", str(model)],
        ["check", str(model), "--against-torch", "--prefill", "1,7,64", "--decode-steps", "16"],
    ]
    for argv in steps:
        print(f"\n$ lfmc {' '.join(argv)}", flush=True)
        rc = main(argv)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(demo(sys.argv[1] if len(sys.argv) > 1 else None))
