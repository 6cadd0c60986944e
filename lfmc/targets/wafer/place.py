"""Placement on a wafer-scale mesh: every weight matrix tiled over a rectangle of PEs, KV caches beside their
attention, the rectangles packed in model order so that consecutive operators sit next to each other.

A weight matrix W [N, K] becomes a *grid* of r x c PEs: PE (row i, column j) holds the tile of rows
``row block i`` and columns ``col block j``. The input vector arrives at the top of each column and is multicast
down it; every PE multiplies its tile; partial sums are reduced along each row (a chain, west to east), so the
row's east-edge PE ends up with its block of y. Rows can be *chunked*: a projection whose output is several
gates ([gate; up], [B; C; x], [q; k; v]) puts the same channel block of every gate in one row, so gating is local
to the east-edge PE. Per-PE SRAM use (tiles, buffers, norm weights, conv / recurrent state, KV blocks, code) is
accounted exactly and never exceeds the PE's capacity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...ir.errors import LfmcError
from ...ir.graph import Graph
from ...ir.ops import schema, state_types

F32 = 4
CODE_BYTES = 4096        # program, task table and runtime per PE (assumed)


@dataclass(frozen=True)
class Machine:
    """The numbers of a mesh that placement and the simulator use (from a wafer profile)."""

    name: str
    width: int
    height: int
    sram_bytes: int
    fmacs: float            # f32 multiply-adds per cycle per PE
    sram_bw: float          # SRAM bytes read per cycle per PE
    clock_ghz: float
    io_gbs: float           # host <-> wafer bandwidth (tokens in, logits out)
    hop_cycles: int = 1     # router latency per hop
    op_cycles: int = 20     # task activation / loop set-up per operation (assumed)
    transcendental_cycles: int = 8   # exp, rsqrt, sigmoid per element (assumed)

    @staticmethod
    def from_profile(p) -> "Machine":
        if p.family != "wafer" or p.mesh_width < 1 or p.mesh_height < 1 or p.pe_sram_kb <= 0:
            raise LfmcError(f"target {p.name}: not a wafer profile (needs family wafer, mesh_width, mesh_height, "
                            "pe_sram_kb)")
        return Machine(p.name, int(p.mesh_width), int(p.mesh_height), int(p.pe_sram_kb * 1024),
                       float(p.pe_fmacs or 1.0), float(p.pe_sram_bytes or 16.0), float(p.clock_ghz or 1.0),
                       float(p.io_gbs or 100.0))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def bounds(n: int, parts: int) -> list[int]:
    """Boundaries of ``n`` split into ``parts`` near-equal contiguous blocks (numpy.array_split's)."""
    q, r = divmod(n, parts)
    out = [0]
    for i in range(parts):
        out.append(out[-1] + q + (1 if i < r else 0))
    return out


@dataclass
class Grid:
    """A weight matrix [N, K] tiled on r x c PEs; rows chunked as ``chunks`` [(offset, length)] of N."""

    name: str
    layer: str
    N: int
    K: int
    chunks: list[tuple[int, int]]
    r: int = 1
    c: int = 1
    x: int = 0
    y: int = 0
    fixed_r: int | None = None
    kind: str = "grid"
    extra_edge_bytes: int = 0          # per east-edge row PE beyond its output block (attention: q/k norms, RoPE)
    state: tuple[str, int, int] | None = None   # (state kind, columns per channel, slots) on the row ends

    @property
    def w(self) -> int:
        return self.c

    @property
    def h(self) -> int:
        return self.r

    def row_bounds(self) -> list[list[int]]:
        """Per chunk, the r+1 boundaries of its split."""
        return [bounds(L, self.r) for _, L in self.chunks]

    def col_bounds(self) -> list[int]:
        return bounds(self.K, self.c)

    def tile_rows(self) -> np.ndarray:
        rb = self.row_bounds()
        return np.array([sum(b[i + 1] - b[i] for b in rb) for i in range(self.r)])

    def tile_cols(self) -> np.ndarray:
        return np.diff(self.col_bounds())

    def out_segments(self) -> list[list[int]]:
        """[x, y, lo, hi] of the grid's output vector (N-space) on its east-edge PEs, row by row."""
        out = []
        for i in range(self.r):
            for (off, _), b in zip(self.chunks, self.row_bounds()):
                if b[i + 1] > b[i]:
                    out.append([self.x + self.c - 1, self.y + i, off + b[i], off + b[i + 1]])
        return out

    def row_perm(self) -> np.ndarray:
        """The N-space rows of the grid in tile order (row block 0 first)."""
        rb = self.row_bounds()
        idx = [np.arange(off + b[i], off + b[i + 1]) for i in range(self.r) for (off, _), b in zip(self.chunks, rb)]
        return np.concatenate(idx) if idx else np.zeros(0, np.int64)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "layer": self.layer, "kind": self.kind, "N": self.N, "K": self.K,
                "chunks": [list(c) for c in self.chunks], "r": self.r, "c": self.c, "x": self.x, "y": self.y}


@dataclass
class KVStrip:
    """The KV cache of one attention layer: for each KV head, ``m`` rows of ``w`` PEs; PE block p of a head holds
    positions [p*b, (p+1)*b) of every sequence slot (keys and values)."""

    name: str
    layer: str
    kv_heads: int
    head_dim: int
    groups: int                 # query heads per KV head
    slots: int
    context: int
    kv_bytes: int
    b: int = 1
    m: int = 1
    wcols: int = 1
    x: int = 0
    y: int = 0
    kind: str = "kv"

    @property
    def blocks(self) -> int:
        return -(-self.context // self.b)

    @property
    def w(self) -> int:
        return self.wcols

    @property
    def h(self) -> int:
        return self.kv_heads * self.m

    def pe_of_block(self, head: int, p: int) -> tuple[int, int]:
        """Column-major within a head's m rows: block p is in row p % m, column p // m."""
        return self.x + p // self.m, self.y + head * self.m + p % self.m

    def per_pe_bytes(self) -> int:
        buf = (self.groups * self.head_dim + 2 * self.groups * (self.head_dim + 2) + self.groups * self.b) * F32
        return self.slots * self.b * self.head_dim * 2 * self.kv_bytes + buf

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "layer": self.layer, "kind": "kv", "kv_heads": self.kv_heads,
                "head_dim": self.head_dim, "groups": self.groups, "slots": self.slots, "context": self.context,
                "kv_bytes": self.kv_bytes, "b": self.b, "m": self.m, "w": self.wcols, "x": self.x, "y": self.y}


Role = Grid | KVStrip


@dataclass
class Placement:
    machine: Machine
    roles: list[Role]
    sram: np.ndarray                      # bytes used per PE [height, width]
    owner: np.ndarray                     # role index per PE, -1 free
    tile_elems: int
    layers: list[str] = field(default_factory=list)

    def role(self, name: str) -> Role:
        for r in self.roles:
            if r.name == name:
                return r
        raise KeyError(name)

    def summary(self) -> dict[str, Any]:
        used = self.owner >= 0
        m = self.machine
        return {"mesh": [m.width, m.height], "pes": m.width * m.height, "pes_used": int(used.sum()),
                "sram_bytes": int(self.sram.sum()), "sram_capacity": m.width * m.height * m.sram_bytes,
                "sram_utilization": float(self.sram.sum() / (m.width * m.height * m.sram_bytes)),
                "max_pe_bytes": int(self.sram.max()), "pe_capacity": m.sram_bytes, "tile_elems": self.tile_elems,
                "layers": len(self.layers), "roles": len(self.roles)}


def layer_of(name: str, graph: Graph, layer_index: dict[str, int]) -> str:
    i = layer_index.get(name)
    return f"layer {i}" if i is not None else "io"


def model_roles(graph: Graph, slots: int, context: int, kv_bytes: int) -> tuple[list[Role], dict[str, str]]:
    """The grids and KV strips of ``graph`` in model order (sizes not chosen yet), and node -> layer name."""
    roles: list[Role] = []
    layer: dict[str, str] = {}
    li = -1
    table_names: dict[str, str] = {}
    for n in graph.nodes:
        if n.op == "rmsnorm" and graph.users().get(n.name) and any(
                schema(graph.node(u).op).token_mixer
                for u in graph.users()[n.name] if u != "<return>"):
            li += 1
        L = f"layer {li}" if li >= 0 and n.op not in ("embedding", "lm_head") else "io"
        layer[n.name] = L
        if n.op in ("embedding", "lm_head"):
            p = n.params["weight"]
            if p.name in table_names:
                layer[n.name] = "io"
                continue
            V, D = p.type.shape
            g = Grid(f"{n.name}.table", "io", int(V), int(D), [(0, int(V))])
            roles.append(g)
            table_names[p.name] = g.name
        elif n.op == "short_conv":
            D = n.type.shape[1]
            roles.append(Grid(f"{n.name}.in_proj", L, 3 * D, D, [(0, D), (D, D), (2 * D, D)],
                              state=_state(n, slots)))
            roles.append(Grid(f"{n.name}.out_proj", L, D, D, [(0, D)]))
        elif n.op == "linear_recurrence":
            D = n.type.shape[1]
            roles.append(Grid(f"{n.name}.in_proj", L, 4 * D, D, [(i * D, D) for i in range(4)],
                              state=_state(n, slots)))
            roles.append(Grid(f"{n.name}.out_proj", L, D, D, [(0, D)]))
        elif n.op == "attention":
            D = n.type.shape[1]
            h, kv, hd = n.attrs["heads"], n.attrs["kv_heads"], n.attrs["head_dim"]
            chunks = [(0, h * hd), (h * hd, kv * hd), ((h + kv) * hd, kv * hd)]
            if "g_proj" in n.params:                   # the gate logits: each KV head's row gets its group's
                chunks.append(((h + 2 * kv) * hd, h))
            g = Grid(f"{n.name}.qkv", L, chunks[-1][0] + chunks[-1][1], D, chunks, fixed_r=kv)
            g.extra_edge_bytes = 2 * hd * F32 + 2 * (h // kv + 1) * hd * F32   # q/k norm weights, rope buffers
            roles.append(g)
            # a sliding window keeps a ring of its last window positions (the mesh runs one token at a time)
            ring = min(context, int(n.attrs["window"])) if "window" in n.attrs else context
            roles.append(KVStrip(f"{n.name}.kv", L, kv, hd, h // kv, slots, ring, kv_bytes))
            roles.append(Grid(f"{n.name}.out_proj", L, D, h * hd, [(0, D)]))
        elif n.op == "gated_mlp":
            D = n.type.shape[1]
            F = n.params["w1"].type.shape[0]
            roles.append(Grid(f"{n.name}.w13", L, 2 * F, D, [(0, F), (F, F)]))
            roles.append(Grid(f"{n.name}.w2", L, D, F, [(0, D)]))
        elif n.op == "moe":
            D = n.type.shape[1]
            E = n.attrs["num_experts"]
            F2 = n.params["gate_up"].type.shape[1]
            F = F2 // 2
            roles.append(Grid(f"{n.name}.router", L, E, D, [(0, E)]))
            for e in range(E):
                roles.append(Grid(f"{n.name}.e{e}.gate_up", L, F2, D, [(0, F), (F, F)]))
                roles.append(Grid(f"{n.name}.e{e}.down", L, D, F, [(0, D)]))
        elif n.op in ("rmsnorm", "add", "linear"):
            if n.op == "linear":
                raise LfmcError(f"%{n.name}: the wafer target has no lowering for a bare linear node")
        else:
            raise LfmcError(f"%{n.name}: op {n.op!r} has no lowering on the wafer target")
    return roles, layer


def _size_grid(g: Grid, t: float, m: Machine) -> None:
    """r x c for about ``t`` weights per PE, near-square tiles, within the mesh and the chunk lengths."""
    n = max(1, math.ceil(g.N * g.K / t))
    rmax = min(min(L for _, L in g.chunks), m.height)
    if g.fixed_r is not None:
        r = g.fixed_r
        if r > m.height:
            raise LfmcError(f"{g.name}: {r} KV-head rows do not fit a mesh {m.height} PEs high")
    else:
        r = int(min(rmax, max(1, round(math.sqrt(n * g.N / g.K)))))
    c = int(min(g.K, m.width, max(1, math.ceil(n / r))))
    g.r, g.c = r, c


def _size_kv(s: KVStrip, m: Machine) -> None:
    free = m.sram_bytes - CODE_BYTES
    per_pos = s.slots * s.head_dim * 2 * s.kv_bytes
    buf = (s.groups * s.head_dim + 2 * s.groups * (s.head_dim + 2)) * F32
    b = (free - buf) // (per_pos + s.groups * F32)
    if b < 1:
        raise LfmcError(f"{s.name}: one cached position of {s.slots} sequence slots takes {per_pos} bytes, more than "
                        f"a PE's {free} free bytes: lower --max-batch or use --kv-dtype f16")
    # at most ~context/1024 positions per PE (at least 2): attention's work spreads over the strip
    s.b = int(min(b, s.context, max(2, -(-s.context // 1024))))
    blocks = s.blocks
    s.m = max(1, min(int(math.ceil(math.sqrt(blocks / 4))), max(1, m.height // s.kv_heads)))
    s.wcols = -(-blocks // s.m)


def _state(n, slots: int) -> tuple[str, int, int]:
    """The per-slot state a token mixer keeps on its in_proj grid's row ends, as its op schema says."""
    (t,) = state_types(n).values()
    return schema(n.op).state_kind, int(t.shape[-1]), slots


def _edge_bytes(g: Grid) -> np.ndarray:
    """Extra bytes on each east-edge row PE beyond tile and buffers."""
    rows = g.tile_rows()
    extra = np.full(g.r, g.extra_edge_bytes, np.int64)
    if g.state is not None:
        kind, width, slots = g.state
        ch = rows // len(g.chunks)                       # the channel block of each chunk (B, C, x / a, b, c, x)
        extra = slots * ch * width * F32 + ch * 2 * F32  # its state, every slot; two scalars per channel
        if kind == "conv":                               # the taps of its channel block
            extra += ch * (width + 1) * F32
    return extra + rows * F32 + F32 * 4        # the output vector and its norm weights, a few scalars


def pe_bytes(g: Grid) -> np.ndarray:
    """Bytes per PE of a grid [r, c]: tile, input block, partial sums, code; plus its east-edge extras."""
    tr, tc = g.tile_rows(), g.tile_cols()
    b = (tr[:, None] * tc[None, :] + tc[None, :] + tr[:, None]) * F32 + CODE_BYTES
    b = b.astype(np.int64)
    b[:, -1] += _edge_bytes(g)
    return b


def _pack(roles: list[Role], m: Machine) -> bool:
    """Skyline packing in model order, each rectangle as low as possible and near the previous one."""
    sky = np.zeros(m.width, np.int64)
    prev_x = 0
    for r in roles:
        w, h = r.w, r.h
        if w > m.width or h > m.height:
            return False
        win = np.lib.stride_tricks.sliding_window_view(sky, w).max(axis=1)       # y where it would sit
        ok = win + h <= m.height
        if not ok.any():
            return False
        xs = np.arange(win.size)
        score = np.where(ok, win * 4 + np.abs(xs - prev_x), np.iinfo(np.int64).max)
        x = int(score.argmin())
        r.x, r.y = x, int(win[x])
        sky[x:x + w] = r.y + h
        prev_x = x + w
    return True


def place(graph: Graph, machine: Machine, slots: int, context: int, kv_bytes: int = 4,
          fill: float = 0.6) -> Placement:
    """Size and place every role of ``graph``; raises :class:`LfmcError` saying per layer by how much a model
    does not fit."""
    roles, layer = model_roles(graph, slots, context, kv_bytes)
    for r in roles:
        if isinstance(r, KVStrip):
            _size_kv(r, machine)
    grids = [r for r in roles if isinstance(r, Grid)]
    weights = sum(g.N * g.K for g in grids)
    kv_pes = sum(r.w * r.h for r in roles if isinstance(r, KVStrip))
    pes = machine.width * machine.height
    max_tile = (machine.sram_bytes - CODE_BYTES) // F32
    t = max(16.0, weights / max(1.0, fill * (pes - kv_pes)))
    while True:
        if t > max_tile:
            _not_fit(graph, roles, layer, machine, max_tile)
        for g in grids:
            _size_grid(g, t, machine)
        if all((pe_bytes(g) <= machine.sram_bytes).all() for g in grids) and _pack(roles, machine):
            break
        t *= 1.15
    sram = np.zeros((machine.height, machine.width), np.int64)
    owner = np.full((machine.height, machine.width), -1, np.int32)
    for i, r in enumerate(roles):
        if (owner[r.y:r.y + r.h, r.x:r.x + r.w] >= 0).any():
            raise LfmcError(f"internal: {r.name} overlaps another role")
        owner[r.y:r.y + r.h, r.x:r.x + r.w] = i
        if isinstance(r, Grid):
            sram[r.y:r.y + r.h, r.x:r.x + r.w] += pe_bytes(r)
        else:
            sram[r.y:r.y + r.h, r.x:r.x + r.w] += r.per_pe_bytes() + CODE_BYTES
    layers = sorted({g.layer for g in roles if g.layer != "io"}, key=lambda s: int(s.split()[1]))
    p = Placement(machine, roles, sram, owner, int(t), layers)
    if sram.max() > machine.sram_bytes:
        y, x = np.unravel_index(int(sram.argmax()), sram.shape)
        raise LfmcError(f"internal: PE ({x}, {y}) would hold {sram.max()} bytes, over {machine.sram_bytes}")
    return p


def _layer_key(name: str) -> int:
    return int(name.split()[1]) if name.startswith("layer ") else -1


def _not_fit(graph: Graph, roles: list[Role], layer: dict[str, str], m: Machine, max_tile: int) -> None:
    need: dict[str, int] = {}
    for r in roles:
        pes = r.w * r.h if isinstance(r, KVStrip) else -(-r.N * r.K // max_tile)
        need[r.layer] = need.get(r.layer, 0) + pes
    total = sum(need.values())
    pes = m.width * m.height
    per = ", ".join(f"{k}: {v:,} PEs ({v * m.sram_bytes / 1e6:.1f} MB)"
                    for k, v in sorted(need.items(), key=lambda kv: _layer_key(kv[0])))
    raise LfmcError(f"{graph.name} does not fit {m.name} ({m.width} x {m.height} = {pes:,} PEs of "
                    f"{m.sram_bytes // 1024} KB): at full tiles it needs at least {total:,} PEs, over by "
                    f"{max(0, total - pes):,} PEs ({max(0, total - pes) * m.sram_bytes / 1e6:.1f} MB) before "
                    f"packing losses; per layer: {per}")
