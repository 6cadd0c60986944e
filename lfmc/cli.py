"""The ``lfmc`` command line: argument parsing and calls into the layers, nothing else."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from .ir.errors import LfmcError


def _load(path: str):
    """A saved model (NAME.lfm), or anything `lfmc import` accepts (imported on the fly, config-only)."""
    from .ir.model import load_model

    p = Path(path)
    if p.is_dir() and (p / "model.lfmir").exists():
        return load_model(p)
    from .frontend import import_source

    return import_source(path)


def cmd_import(a: argparse.Namespace) -> int:
    from .frontend import import_source
    from .ir.model import save_model

    m = import_source(a.source, weights=a.random_weights, seed=a.seed, std=a.init_std)
    if m.weights is None and a.random_weights is False and m.provenance.get("source") == "preset":
        note = " (config-only: no weights; add --random-weights for seeded random weights)"
    else:
        note = ""
    out = Path(a.output or f"{Path(a.source).name}.lfm")
    save_model(m, out)
    print(f"wrote {out}: {len(m.graph.nodes)} nodes, {m.graph.num_parameters():,} parameters{note}")
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from .ir.summary import format_summary, summarize
    from .ir.text import print_graph

    m = _load(a.model)
    if a.ir:
        print(print_graph(m.graph), end="")
        return 0
    s = summarize(m.graph)
    s["provenance"] = {k: v for k, v in m.provenance.items() if k != "config"}
    s["has_weights"] = m.weights is not None
    if a.json:
        print(json.dumps(s, indent=1, default=str))
    else:
        print(format_summary(s))
        for k in ("assumed",):
            if m.provenance.get(k):
                print(f"assumed fields: {', '.join(m.provenance[k])}")
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    from .check import compare

    if not a.against_torch:
        raise LfmcError("say what to check against: --against-torch")
    m = _load(a.model)
    lens = tuple(int(x) for x in a.prefill.split(","))
    res = compare(m, lens, a.decode_steps, a.seed, progress=None if a.json else lambda s: print(s, flush=True))
    if a.json:
        print(json.dumps(res.to_json(), indent=1))
    else:
        w = res.worst()
        print(f"max |logit diff| {res.max_abs_diff:.3g} over {len(res.cases)} calls; worst: prefill {w.prefill} "
              f"step {w.step}: {w.max_abs_diff:.3g} (limit {w.limit:.3g})")
        print("OK" if res.ok else "FAIL: over tolerance")
    return 0 if res.ok else 1


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lfmc", description="Compile Liquid Foundation Models for the device they "
                                 "run on.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("import", help="import a preset or an HF checkpoint directory into a saved model NAME.lfm")
    p.add_argument("source", help="a preset name (see `lfmc presets`) or an HF checkpoint directory")
    p.add_argument("-o", "--output", help="output directory (default: ./SOURCE.lfm)")
    p.add_argument("--random-weights", action="store_true", help="presets: seeded random weights (numpy)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-weights (default 0)")
    p.add_argument("--init-std", type=float, default=None,
                   help="std of --random-weights (default: the config's initializer_range, 0.02)")
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("show", help="per-layer operator class, featurizer, parameters and state")
    p.add_argument("model", help="a saved model (NAME.lfm), a preset or an HF checkpoint directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--ir", action="store_true", help="print the IR text instead")
    p.set_defaults(fn=cmd_show)

    p = sub.add_parser("check", help="check the interpreter's logits against transformers")
    p.add_argument("model", help="a saved model with weights")
    p.add_argument("--against-torch", action="store_true", help="compare with transformers' modeling code")
    p.add_argument("--prefill", default="1,7,64", help="comma-separated prefill lengths (default 1,7,64)")
    p.add_argument("--decode-steps", type=int, default=16, help="greedy decode steps after each prefill")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("presets", help="list the built-in model presets")
    p.set_defaults(fn=cmd_presets)
    return ap


def cmd_presets(a: argparse.Namespace) -> int:
    from .frontend.presets import PRESETS

    for k, v in PRESETS.items():
        pub = v["published_parameters"]
        print(f"{k:<14} {v['architecture']:<20} " + (f"published {pub:,} parameters" if pub else "")
              + (f"  assumed: {'; '.join(v['assumed'])}" if v["assumed"] else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except LfmcError as e:
        print(f"lfmc: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lfmc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
