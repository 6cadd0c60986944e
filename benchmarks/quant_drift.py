"""Logit drift of quantized artifacts against the float32 one: top-1 agreement and relative logit error over
teacher-forced positions of a random token stream (same seeded random weights, std 0.02).

    .venv/bin/python benchmarks/quant_drift.py --preset lfm2-350m --positions 256 --quant q8,q4g32,q4g32a
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lfmc.compile import compile_model, load_source  # noqa: E402
from lfmc.runtime import Engine  # noqa: E402


def logits_stream(art: Path, toks: list[int]) -> np.ndarray:
    eng = Engine(art, max_batch=1, max_context=len(toks) + 1)
    s = eng.new_sequence()
    out = [eng.prefill(s, toks[:1])]
    for t in toks[1:]:
        out.append(eng.decode([s], [t])[0])
    return np.stack(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="lfm2-350m")
    ap.add_argument("--positions", type=int, default=256)
    ap.add_argument("--quant", default="q8,q4g32,q4g32a")
    ap.add_argument("--build", default="build/drift")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    toks = np.random.default_rng(0).integers(0, 65536 if a.preset != "lfm2-tiny" else 256, a.positions).tolist()
    m = load_source(a.preset)
    arts = {}
    for q in ["f32"] + a.quant.split(","):
        arts[q] = compile_model(m, Path(a.build) / f"{a.preset}-{q}", max_batch=1, quant=None if q == "f32" else q)
    del m
    ref = logits_stream(arts["f32"], toks)
    res = {}
    for q in a.quant.split(","):
        got = logits_stream(arts[q], toks)
        res[q] = {"top1_agreement": float(np.mean(got.argmax(-1) == ref.argmax(-1))),
                  "relative_rms": float(np.sqrt(((got - ref) ** 2).mean()) / ref.std())}
        print(f"{q:>8}: top-1 agreement {res[q]['top1_agreement']:.3f}, relative logit RMS error "
              f"{res[q]['relative_rms']:.4f} over {a.positions} positions", flush=True)
    out = Path(a.out or Path(__file__).parent / "results" / f"drift-{a.preset}.json")
    out.write_text(json.dumps({"preset": a.preset, "positions": a.positions, "results": res,
                               "command": " ".join(sys.argv)}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
