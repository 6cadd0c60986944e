"""CSL-style source of a mesh program, for users of a real wafer SDK to see the mapping.

Not compiled here (no SDK): a ``layout.csl`` that places every role's rectangle with its parameters and
colors, and one PE program per role kind (GEMV tile, row-end epilogue, KV block). It follows the mesh program
op for op, so what it says is what the simulator runs.
"""
from __future__ import annotations

from typing import Any

ROLE_FILES = {
    "gemv_tile.csl": """// One PE of a weight grid: a tile of W, the input block of its column, a partial sum.
param tile_rows: u16;      // rows of this PE's tile (its row block, every chunk)
param tile_cols: u16;      // columns of this PE's tile (its column block)
param is_row_end: bool;    // east edge: finishes the reduction, runs the epilogue
param x_color: color;      // column multicast of the input block (from the north)
param sum_color: color;    // row reduction chain (west -> east)

var W: [tile_rows, tile_cols]f32;   // loaded with the artifact (params: <grid>.tiles[row, col])
var x: [tile_cols]f32;
var y: [tile_rows]f32;

task on_x() void {                  // all tile_cols words of x arrived
  for (@range(u16, tile_rows)) |i| { y[i] = 0.0; for (@range(u16, tile_cols)) |k| { y[i] += W[i, k] * x[k]; } }
  @activate(recv_partial_id);
}
task on_partial(p: [tile_rows]f32) void {   // from the west neighbour (none in column 0)
  for (@range(u16, tile_rows)) |i| { y[i] += p[i]; }
  if (is_row_end) { @activate(epilogue_id); } else { @fmovs(fabout(sum_color, .east), y); }
}
""",
    "row_end_epilogue.csl": """// The east-edge PE of a grid row: the op's epilogue on its channel block.
//   conv:   bx = B*x; y = C * sum_j state[j]*taps[j] (+ bias); state shifts (per sequence slot)
//   swiglu: y = silu(gate) * up
//   recurrence: h = sigmoid(a)*h + b*x; y = c*h (state per slot)
//   attn:   q/k RMSNorm + RoPE; k, v sent to the PE owning the position; q multicast along the head's strip;
//           (max, sum, out) combined as the chain returns; y = out / sum
//   norm:   local sum of squares, one word along the all-reduce chain and back, scale by weight block
param op: comptime_string;
param channels: u16;
var y: [channels]f32;
""",
    "kv_block.csl": """// One PE of an attention layer's KV strip: positions [p*b, (p+1)*b) of every sequence slot, one KV head.
param b: u16;            // positions held
param head_dim: u16;
param groups: u16;       // query heads sharing this KV head
param slots: u16;
var K: [slots, b, head_dim]f32;
var V: [slots, b, head_dim]f32;
task on_q(q: [groups, head_dim]f32) void {
  // scores over this PE's filled positions, running max m, sum l, out o; combined with the eastern
  // neighbour's (m, l, o) and forwarded west along the strip, back to the qkv grid's row-end PE.
}
""",
}


def layout(program: dict[str, Any]) -> str:
    """``layout.csl``: every placed role with its rectangle, parameters and colors."""
    m = program["machine"]
    lines = [f"// lfmc mesh program for {m['name']}: {m['width']} x {m['height']} PEs "
             f"({program['placement']['pes_used']} used)",
             f"layout {{", f"  @set_rectangle({m['width']}, {m['height']});"]
    for i, r in enumerate(program["roles"]):
        if r["kind"] == "kv":
            lines.append(f"  // {r['name']} ({r['layer']}): KV strip, {r['kv_heads']} heads x {r['m']} rows x "
                         f"{r['w']} PEs, {r['b']} positions per PE")
            lines.append(f"  place_rect(\"kv_block.csl\", {r['x']}, {r['y']}, {r['w']}, {r['kv_heads'] * r['m']}, "
                         f".{{ .b = {r['b']}, .head_dim = {r['head_dim']}, .groups = {r['groups']}, "
                         f".slots = {r['slots']} }});")
        else:
            tr = [sum(b[k + 1] - b[k] for b in r["row_bounds"]) for k in range(r["r"])]
            tc = [r["col_bounds"][k + 1] - r["col_bounds"][k] for k in range(r["c"])]
            lines.append(f"  // {r['name']} ({r['layer']}): W [{r['N']}, {r['K']}] on {r['r']} x {r['c']} PEs, tiles "
                         f"<= {max(tr)} x {max(tc)}")
            lines.append(f"  place_rect(\"gemv_tile.csl\", {r['x']}, {r['y']}, {r['c']}, {r['r']}, "
                         f".{{ .tile_rows = row_block(), .tile_cols = col_block(), .is_row_end = col() == "
                         f"{r['c'] - 1}, .x_color = @get_color({(2 * i) % 24}), .sum_color = "
                         f"@get_color({(2 * i + 1) % 24}) }});")
    lines.append("}")
    ops = ", ".join(sorted({o["op"] for o in program["ops"]}))
    lines.append(f"// per token: {len(program['ops'])} ops ({ops}); see mesh.json for the exact sequence")
    return "\n".join(lines) + "\n"
