"""The wafer's decode estimate: one simulated decode step of a placed mesh program (cycles only), where its time
goes, and the bounds it is checked against; and the lines of the compile summary that report it."""
from __future__ import annotations

from typing import Any


def estimate(prog: dict[str, Any], simulator: type, batch: int = 1, context: int | None = None) -> dict[str, Any]:
    """Cycles of one decode step on a placed mesh program (the simulator, cycles only): one sequence, and
    ``batch`` sequences pipelined, at position ``context`` (default: 128 or the max context); where the single
    sequence's time goes (its critical path), and the bounds it is checked against. ``simulator``: the runtime's
    mesh simulator class (handed in from above: targets do not import the runtime)."""

    m = prog["machine"]
    hz = m["clock_ghz"] * 1e9
    pos = min(int(prog["context"]) - 1, 128 if context is None else int(context))
    sim = simulator(prog, None)
    sim.step("decode", [1], [0], [pos])                    # warm: links and clocks as in steady decoding
    sim.link_words[:] = 0
    one = sim.step("decode", [1], [0], [pos])
    link_words = float(sim.link_words.max())
    br = sim.breakdown(one)
    tl = sim.timeline(one)
    batch = max(1, min(int(batch), int(prog["slots"])))
    many = sim.step("decode", [1] * batch, list(range(batch)), [pos] * batch) if batch > 1 else one
    pl = prog["placement"]
    weights = sum(r["N"] * r["K"] for r in prog["roles"] if r["kind"] != "kv") * 4
    busiest_pe = max(max(r["_tr"]) * max(r["_tc"]) for r in sim.roles.values() if r["kind"] != "kv") * 4
    bounds = {
        "sram_bandwidth_cycles": weights / (pl["pes_used"] * m["sram_bw"]),   # every weight read once, all PEs
        "busiest_pe_cycles": busiest_pe / min(m["sram_bw"], 4 * m["fmacs"]),  # the largest tile, read at its rate
        "busiest_link_words": link_words,                                    # words on the busiest link per token
    }
    return {"position": pos, "cycles": one["cycles"], "seconds": one["seconds"], "tokens_per_s": 1 / one["seconds"],
            "batch": batch, "batch_cycles": many["cycles"], "batch_tokens_per_s": batch / many["seconds"],
            "breakdown": br, "bounds": bounds, "assumptions": sim.assumptions(), "timeline": tl,
            "clock_hz": hz}


def report(prog: dict[str, Any], est: dict[str, Any]) -> list[str]:
    """Lines for the compile summary: placement, estimate, where the time goes, assumptions."""
    pl, m = prog["placement"], prog["machine"]
    hz = m["clock_ghz"] * 1e9
    out = [f"placed on {m['name']}: {pl['pes_used']:,} of {pl['pes']:,} PEs, SRAM {pl['sram_bytes'] / 1e9:.3f} of "
           f"{pl['sram_capacity'] / 1e9:.2f} GB ({pl['sram_utilization']:.1%}), busiest PE {pl['max_pe_bytes']:,} of "
           f"{pl['pe_capacity']:,} bytes, {pl['layers']} layers in a pipeline, ~{pl['tile_elems']:,} weights per PE",
           f"estimated decode (simulated cycles, position {est['position']}): {est['cycles']:,.0f} cycles = "
           f"{est['seconds'] * 1e6:,.1f} us -> {est['tokens_per_s']:,.0f} tokens/s for one sequence; "
           f"{est['batch']} sequences pipelined: {est['batch_tokens_per_s']:,.0f} tokens/s"]
    tot = sum(est["breakdown"].values()) or 1.0
    out.append("  critical path: " + ", ".join(f"{k} {v / tot:.0%}" for k, v in est["breakdown"].items()))
    b = est["bounds"]
    out.append(f"  bounds: all weights read once over the used PEs' SRAM bandwidth {b['sram_bandwidth_cycles']:,.0f} "
               f"cycles; the largest tile {b['busiest_pe_cycles']:,.0f} cycles; busiest link "
               f"{b['busiest_link_words']:,.0f} words per token ({1 / max(hz, 1):.0e} s per cycle)")
    out.append("  assumptions: " + "; ".join(est["assumptions"]))
    return out
