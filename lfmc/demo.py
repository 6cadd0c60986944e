"""`make demo`: the built-in tiny LFM2 (random weights, byte-level tokenizer) from import to generated text.

Steps: import the preset with seeded random weights, show it, check the interpreter against transformers,
compile it for this CPU, generate from the compiled artifact and print tokens/s. The weights are random, so
the text is noise: the point is the path, and that each step's numbers agree with transformers.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from .cli import main


def demo(workdir: str | None = None) -> int:
    root = Path(workdir or tempfile.mkdtemp(prefix="lfmc-demo-"))
    model, art = root / "lfm2-tiny.lfm", root / "lfm2-tiny.host"
    steps = [
        ["import", "lfm2-tiny", "--random-weights", "--seed", "0", "--init-std", "0.25", "-o", str(model)],
        ["show", str(model)],
        ["check", str(model), "--against-torch", "--prefill", "1,7,64", "--decode-steps", "16"],
        ["compile", str(model), "--target", "host", "-o", str(art)],
        ["run", str(art), "--prompt", "Liquid foundation models ", "--max-new-tokens", "48", "--ignore-eos"],
        ["bench", str(art), "--prefill", "128", "--decode-steps", "64", "--reps", "1"],
    ]
    for argv in steps:
        print(f"\n$ lfmc {' '.join(argv)}", flush=True)
        rc = main(argv)
        if rc:
            return rc
    print(f"\n(random weights: the text above is noise; artifacts are in {root})")
    return 0


if __name__ == "__main__":
    sys.exit(demo(sys.argv[1] if len(sys.argv) > 1 else None))
