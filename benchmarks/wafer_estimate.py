"""LFM2 presets placed on a wafer-scale mesh and one decode step simulated (cycles only, from the config).

    .venv/bin/python benchmarks/wafer_estimate.py                       # 350M and 1.2B on wafer-wse2 and wse3

For each model and wafer: SRAM utilization, PEs used, pipeline depth (layers), the simulated decode step for one
sequence at several positions and for 8 sequences pipelined, where one sequence's time goes (its critical path),
and the bounds the estimate is checked against: every weight read once at the used PEs' aggregate SRAM bandwidth,
the largest tile read at one PE's rate, and the words on the busiest link. The estimate must not be below any of
them; how far above says what limits decoding on a wafer (latency along the pipeline, not bandwidth). Prints a
table; writes JSON and the 350M pictures (benchmarks/results/wafer-*.{json,png}). Nothing here is measured on
hardware: the numbers are the simulator's, with its printed assumptions.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lfmc.compile import wafer_estimate  # noqa: E402
from lfmc.frontend import import_source  # noqa: E402
from lfmc.passes import run_pipeline  # noqa: E402
from lfmc.targets.backend import backend_named  # noqa: E402
from lfmc.targets.profiles import get_profile  # noqa: E402
from lfmc.targets.wafer import lower_wafer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="lfm2-350m,lfm2-1.2b")
    ap.add_argument("--targets", default="wafer-wse2,wafer-wse3")
    ap.add_argument("--batch", type=int, default=8, help="sequence slots placed (and pipelined in the estimate)")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--positions", default="128,2048,4000")
    ap.add_argument("--out", default="benchmarks/results/wafer-estimate.json")
    a = ap.parse_args()
    rows = []
    for model in a.models.split(","):
        m = run_pipeline(import_source(model), None, {}, without=backend_named("wafer").without_passes)
        for target in a.targets.split(","):
            t0 = time.perf_counter()
            prof = get_profile(target)
            prog, _, pl = lower_wafer(m.graph, None, prof, a.batch, a.context)
            hz = prof.clock_ghz * 1e9
            ests = {int(p): wafer_estimate(prog, a.batch, int(p)) for p in a.positions.split(",")}
            first = ests[min(ests)]
            if model == "lfm2-350m" and target == "wafer-wse2":
                from lfmc.targets.wafer.plot import plot_placement, plot_timeline

                out = Path(a.out).parent
                plot_placement(pl, out / "wafer-placement-350m-wse2.png")
                plot_timeline(first["timeline"], out / "wafer-decode-350m-wse2.png", prog["machine"])
            s = prog["placement"]
            weights = sum(r["N"] * r["K"] for r in prog["roles"] if r["kind"] != "kv") * 4
            row = {"model": model, "target": target, "weights_bytes": weights, "placement": s,
                   "seconds_to_place_and_simulate": round(time.perf_counter() - t0, 1),
                   "estimates": {p: {k: v for k, v in e.items() if k != "timeline"} for p, e in ests.items()}}
            rows.append(row)
            b = first["bounds"]
            print(f"\n{model} on {target}: {s['pes_used']:,} of {s['pes']:,} PEs, SRAM {s['sram_bytes'] / 1e9:.2f} of "
                  f"{s['sram_capacity'] / 1e9:.1f} GB ({s['sram_utilization']:.1%}), busiest PE "
                  f"{s['max_pe_bytes'] / 1024:.1f} of {s['pe_capacity'] // 1024} KB, {s['layers']} layers, "
                  f"~{s['tile_elems']:,} weights per PE")
            print(f"  {'position':>8} {'cycles':>10} {'us/token':>9} {'tok/s (1 seq)':>14} "
                  f"{f'tok/s ({a.batch} seq)':>14}")
            for p, e in ests.items():
                print(f"  {p:>8} {e['cycles']:>10,.0f} {e['seconds'] * 1e6:>9.1f} {e['tokens_per_s']:>14,.0f} "
                      f"{e['batch_tokens_per_s']:>14,.0f}")
            tot = sum(first["breakdown"].values())
            print(f"  critical path at position {first['position']}: " + ", ".join(
                f"{k} {v / tot:.0%}" for k, v in first["breakdown"].items()))
            print(f"  bounds (cycles): weights {weights / 1e9:.2f} GB / ({s['pes_used']:,} PEs x "
                  f"{prof.pe_sram_bytes:g} B/cycle) = {b['sram_bandwidth_cycles']:,.0f}; largest tile "
                  f"{b['busiest_pe_cycles']:,.0f}; busiest link {b['busiest_link_words']:,.0f} words; estimate "
                  f"{first['cycles']:,.0f} = {first['cycles'] / max(b.values()):.0f}x the largest bound "
                  f"({1e6 / hz:.4f} us per cycle)")
    print("\nassumptions: " + "; ".join(first["assumptions"]))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"batch": a.batch, "context": a.context, "rows": rows}, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
