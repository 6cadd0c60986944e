"""Per-layer summary of a model: operator class, featurizer, parameters and state (what ``lfmc show`` prints)."""
from __future__ import annotations

from typing import Any

from .graph import Graph


def summarize(g: Graph) -> dict[str, Any]:
    """A JSON-able summary. State is split into a constant part (bytes per sequence, e.g. conv state or a
    sliding window's ring of keys) and a part that grows with context (bytes per token, e.g. a KV cache)."""
    rows, seen = [], set()
    for n in g.nodes:
        # a sliding window's ring counted at its least (window slots; the artifact adds the prefill chunk)
        const = sum(t.nbytes(ring=n.attrs.get("window", 0)) for t in n.state.values() if "ctx" not in t.shape)
        per_tok = sum(t.nbytes(ctx=1) for t in n.state.values() if "ctx" in t.shape)
        fresh = [p for p in n.params.values() if p.name not in seen]
        seen.update(p.name for p in n.params.values())
        rows.append({
            "value": n.name, "op": n.op, "class": n.liv.cls if n.liv else None,
            "mixing": n.liv.mixing if n.liv else None,
            "featurizer": {k: str(v) for k, v in n.liv.featurizer.items()} if n.liv else None,
            "parameters": sum(p.type.numel() for p in fresh),
            "tied": sorted(p.name for p in n.params.values() if p not in fresh),
            "state": {k: str(t) for k, t in n.state.items()},
            "state_bytes_per_sequence": const, "state_bytes_per_token": per_tok,
            "attrs": dict(n.attrs),
        })
    return {
        "name": g.name,
        "parameters": g.num_parameters(),
        "buffers": g.num_parameters(buffers=True) - g.num_parameters(),
        "weight_bytes": sum(p.type.nbytes() for p in g.params().values()),
        "state_bytes_per_sequence": sum(r["state_bytes_per_sequence"] for r in rows),
        "state_bytes_per_token": sum(r["state_bytes_per_token"] for r in rows),
        "nodes": rows,
    }


def _human(n: float, unit: str = "B") -> str:
    for u in ("", "Ki", "Mi", "Gi", "Ti"):
        if abs(n) < 1024 or u == "Ti":
            return f"{n:.0f} {u}{unit}" if u == "" else f"{n:.1f} {u}{unit}"
        n /= 1024
    return str(n)


def format_summary(s: dict[str, Any]) -> str:
    """A human table of :func:`summarize`'s output."""
    head = f"{'%':>4}  {'op':<11} {'class':<15} {'featurizer':<44} {'params':>12}  {'state/seq':>10}  {'state/token':>11}"
    lines = [f"model {s['name']}", head, "-" * len(head)]
    for r in s["nodes"]:
        feat = ", ".join(f"{k}={v}" for k, v in (r["featurizer"] or {}).items())
        if len(feat) > 44:
            feat = feat[:41] + "..."
        params = f"{r['parameters']:,}" + (" +tied" if r["tied"] else "")
        lines.append(f"{r['value']:>4}  {r['op']:<11} {r['class'] or '-':<15} {feat or '-':<44} {params:>12}  "
                     f"{_human(r['state_bytes_per_sequence']) if r['state_bytes_per_sequence'] else '-':>10}  "
                     f"{_human(r['state_bytes_per_token']) if r['state_bytes_per_token'] else '-':>11}")
    lines.append("-" * len(head))
    pruned = [(r["value"], r["attrs"]["pruned"]) for r in s["nodes"] if "pruned" in (r.get("attrs") or {})]
    for name, p in pruned:
        lines.append(f"%{name}: kept {len(p['kept'])} of {p['of']} experts {p['kept']} by {p['select']}"
                     f"{' (dropped ones merged in)' if p.get('merged') else ''}: {p['why']}")
    if pruned:
        lines.append("-" * len(head))
    lines.append(f"parameters {s['parameters']:,}" + (f" (+{s['buffers']:,} buffer values)" if s["buffers"] else "")
                 + f"; weights {_human(s['weight_bytes'])}")
    lines.append(f"state per sequence: {_human(s['state_bytes_per_sequence'])} constant (conv / recurrence / sliding-window KV) "
                 f"+ {_human(s['state_bytes_per_token'])} per token of context (KV cache)")
    return "\n".join(lines)
