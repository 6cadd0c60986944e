"""The `wafer` driver: lfmc's simulator of a wafer-scale dataflow mesh, executing a placed mesh program.

A wafer artifact holds ``mesh.json`` (the program lfmc's wafer code generator wrote: placed roles, where each
vector lives, the ops of one token) and each grid's tiles. The simulator runs the program token by token:

- **Numerics** are the model's: every PE computes on its own tile and its own slices of vectors (a GEMV tile,
  its link of a reduction chain, its channel block of a conv, its positions of a KV cache), in float32, and data
  reaches another PE only through the transfers the ops name. Tokens equal the IR interpreter's.
- **Cycles are an estimate.** Each role (a grid, a KV strip) has a clock; an op starts when its inputs are
  ready and its role is free. Compute takes ``fmacs`` f32 multiply-adds per cycle per PE (or SRAM bandwidth,
  whichever is slower) plus a fixed activation cost; a transfer routes its messages XY (row first, then column,
  optionally multicast along a line), counts the words on every directed link, and lasts
  ``max link words + hops x hop latency + activation``; every link it uses is reserved for that time, so no link
  ever carries more than one 32-bit word per cycle (``trace=True`` records the reservations to check it).
  Assumptions are printed by :meth:`MeshSim.assumptions`.

Numpy only: no TVM, torch or compiler import. Without parameters (``params=None``) it runs cycles alone, for
models too large to hold here; MoE experts are then chosen round-robin.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...mixers import causal_conv, rope, rope_inv_freq
from ..errors import EngineError, RuntimeLoadError
from .host import HostMemory

F32 = np.float32
E, W, S, N = 0, 1, 2, 3
CATEGORY = {"mcast": "route: multicast into grids", "gemv": "compute: GEMV tiles", "reduce": "route: reduction chains",
            "move": "route: moves between ops", "norm": "norm all-reduce", "attn": "attention (KV strips)",
            "conv": "elementwise (conv, gates)", "swiglu": "elementwise (conv, gates)",
            "recurrence": "elementwise (conv, gates)", "add": "elementwise (conv, gates)", "moe": "MoE routing + experts",
            "embed": "embedding row fetch", "logits": "host I/O (logits out)"}


class Transfer:
    """Messages routed XY on the mesh: per-link word counts inside a bounding box, and the transfer's duration."""

    __slots__ = ("x0", "y0", "loads", "max_load", "latency", "words")

    def __init__(self, msgs: np.ndarray, latency: float | None = None):
        """``msgs`` [k, 7] ints: src x, src y, dst x, dst y, words, extension direction (-1: none), extension
        length (the message continues that many hops past dst, delivered to every PE on the way)."""
        msgs = np.asarray(msgs, np.int64).reshape(-1, 7)
        msgs = msgs[msgs[:, 4] > 0]
        if msgs.size == 0:
            self.x0 = self.y0 = 0
            self.loads = np.zeros((4, 0, 0))
            self.max_load = 0.0
            self.latency = float(latency or 0.0)
            self.words = 0
            return
        sx, sy, dx, dy, w, ed, el = msgs.T
        ex = dx + np.where(ed == E, el, 0) - np.where(ed == W, el, 0)
        ey = dy + np.where(ed == S, el, 0) - np.where(ed == N, el, 0)
        x0, x1 = int(min(sx.min(), dx.min(), ex.min())), int(max(sx.max(), dx.max(), ex.max())) + 1
        y0, y1 = int(min(sy.min(), dy.min(), ey.min())), int(max(sy.max(), dy.max(), ey.max())) + 1
        h, wd = y1 - y0, x1 - x0
        dh = np.zeros((2, h, wd + 1))          # E, W links (along rows)
        dv = np.zeros((2, h + 1, wd))          # S, N links (along columns)

        def horiz(row, a, b, ww):              # links a..b-1 (positions), direction by sign handled by caller
            np.add.at(dh[row[0]], (row[1] - y0, a - x0), ww)
            np.add.at(dh[row[0]], (row[1] - y0, b - x0), -ww)

        def vert(col, a, b, ww):
            np.add.at(dv[col[0]], (a - y0, col[1] - x0), ww)
            np.add.at(dv[col[0]], (b - y0, col[1] - x0), -ww)

        f = w.astype(float)
        m = dx > sx
        horiz((0, sy[m]), sx[m], dx[m], f[m])                 # east: links at x = sx .. dx-1
        m = dx < sx
        horiz((1, sy[m]), dx[m] + 1, sx[m] + 1, f[m])         # west: links at x = dx+1 .. sx
        m = dy > sy
        vert((0, dx[m]), sy[m], dy[m], f[m])                  # south
        m = dy < sy
        vert((1, dx[m]), dy[m] + 1, sy[m] + 1, f[m])          # north
        for d, (a, b) in ((E, (dx, dx + el)), (W, (dx - el + 1, dx + 1))):
            m = (ed == d) & (el > 0)
            horiz((d, dy[m]), a[m], b[m], f[m])
        for d, (a, b) in ((S, (dy, dy + el)), (N, (dy - el + 1, dy + 1))):
            m = (ed == d) & (el > 0)
            vert((d - 2, dx[m]), a[m], b[m], f[m])
        loads = np.empty((4, h, wd))
        loads[0:2] = np.cumsum(dh, axis=2)[:, :, :wd]
        loads[2:4] = np.cumsum(dv, axis=1)[:, :h, :]
        self.x0, self.y0, self.loads = x0, y0, loads
        self.max_load = float(loads.max())
        hops = np.abs(dx - sx) + np.abs(dy - sy) + el
        self.latency = float(hops.max() if latency is None else latency)
        self.words = int(w.sum())


class MeshSim:
    """Executes a mesh program: numerics on per-PE data (with ``params``) and cycle estimates."""

    def __init__(self, program: dict[str, Any], params: dict[str, np.ndarray] | None = None, trace: bool = False):
        self.prog = program
        self.m = program["machine"]
        self.H, self.W = int(self.m["height"]), int(self.m["width"])
        self.p = params
        self.numerics = params is not None
        self.trace: list[tuple[float, float, int, int, np.ndarray]] | None = [] if trace else None
        self.roles = {r["name"]: dict(r) for r in program["roles"]}     # copies: the sim keeps buffers in them
        for r in self.roles.values():
            if r["kind"] != "kv":
                r["_tr"] = np.array([sum(b[i + 1] - b[i] for b in r["row_bounds"]) for i in range(r["r"])])
                r["_tc"] = np.diff(r["col_bounds"])
        self.values = {k: np.asarray(v, np.int64).reshape(-1, 4) for k, v in program["values"].items()}
        self.slots, self.context = int(program["slots"]), int(program["context"])
        self.busy = np.zeros((4, self.H, self.W))
        self.link_words = np.zeros((4, self.H, self.W))
        self._cache: dict[tuple, Transfer] = {}
        self.clk: dict[str, tuple[float, int]] = {}
        self.now = 0.0
        self.records: list[tuple[int, str, str, float, float, int]] = []   # token, op, where, start, end, cause
        self.calls: list[dict[str, Any]] = []
        self._rr = 0
        self._state()

    # ------------------------------------------------------------------------------------------ state
    def _state(self) -> None:
        self.conv: dict[str, list[np.ndarray]] = {}
        self.kv: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if not self.numerics:
            return
        for op in self.prog["ops"]:
            if op["op"] in ("conv", "recurrence"):
                g = self.roles[op["grid"]]
                ch = [b[i + 1] - b[i] for b in g["row_bounds"][:1] for i in range(g["r"])]
                L = op.get("L", 2)
                self.conv[op["state"]] = [np.zeros((self.slots, c, L - 1), F32) for c in ch]
            elif op["op"] == "attn":
                k = self.roles[op["kv"]]
                dt = np.float16 if op["kv_dtype"] == "f16" else F32
                shape = (k["kv_heads"], -(-k["context"] // k["b"]), self.slots, k["b"], k["head_dim"])
                self.kv[op["kv"]] = (np.zeros(shape, dt), np.zeros(shape, dt))

    def reset_slot(self, slot: int) -> None:
        """Zero a sequence slot's conv and recurrent state (its KV positions are overwritten as it advances)."""
        for st in self.conv.values():
            for a in st:
                a[slot] = 0.0

    def assumptions(self) -> list[str]:
        m = self.m
        return [f"{m['width']} x {m['height']} PEs, {m['sram_bytes'] // 1024} KB SRAM each, clock {m['clock_ghz']} GHz",
                f"{m['fmacs']:g} f32 FMAC per cycle per PE, {m['sram_bw']:g} SRAM bytes read per cycle per PE",
                "links: one 32-bit word per cycle per direction, XY routing, "
                f"{m['hop_cycles']} cycle per hop, multicast along lines",
                f"{m['op_cycles']} cycles to start each operation on a PE, {m['transcendental_cycles']} cycles per "
                "exp / rsqrt / sigmoid element",
                "a transfer reserves every link it uses for its whole duration (conservative)",
                f"host I/O {m['io_gbs']:g} GB/s for logits out; tokens in take no time; no host latency"]

    # ------------------------------------------------------------------------------------------ timing
    def _reserve(self, T: Transfer, t: float, extra: float = 0.0) -> float:
        """Start ``T`` at or after ``t`` when all its links are free; returns its end."""
        dur = T.max_load + T.latency * self.m["hop_cycles"] + self.m["op_cycles"] + extra
        if T.loads.size == 0:
            return t + dur
        h, w = T.loads.shape[1:]
        region = self.busy[:, T.y0:T.y0 + h, T.x0:T.x0 + w]
        used = T.loads > 0
        t0 = max(t, float(region[used].max()) if used.any() else t)
        t1 = t0 + dur
        region[used] = t1
        self.link_words[:, T.y0:T.y0 + h, T.x0:T.x0 + w] += T.loads
        if self.trace is not None:
            self.trace.append((t0, t1, T.x0, T.y0, T.loads))
        return t1

    def _compute(self, fmacs: float, nbytes: float = 0.0, elems: float = 0.0, trans: float = 0.0) -> float:
        m = self.m
        return (max(fmacs / m["fmacs"], nbytes / m["sram_bw"]) + elems + trans * m["transcendental_cycles"]
                + m["op_cycles"])

    def _start(self, *deps: tuple[float, int]) -> tuple[float, int]:
        """The latest of ``deps`` (time, record that set it): when an op waiting on all of them can start."""
        return max(deps, key=lambda d: d[0]) if deps else (self.now, -1)

    def _rec(self, tok: int, op: str, where: str, start: tuple[float, int], end: float) -> int:
        self.records.append((tok, op, where, start[0], end, start[1]))
        return len(self.records) - 1

    def _role(self, name: str) -> tuple[float, int]:
        return self.clk.get(name, (0.0, -1))

    # -------------------------------------------------------------------------------- value plumbing
    def _gather(self, vals: dict[str, list[np.ndarray]], name: str, lo: int, hi: int) -> np.ndarray:
        segs = self.values[name]
        out = np.empty(hi - lo, F32)
        for k in np.nonzero((segs[:, 2] < hi) & (segs[:, 3] > lo))[0]:
            a, b = max(lo, segs[k, 2]), min(hi, segs[k, 3])
            out[a - lo:b - lo] = vals[name][k][a - segs[k, 2]:b - segs[k, 2]]
        return out

    def _scatter(self, name: str, full: np.ndarray) -> list[np.ndarray]:
        return [full[lo:hi].copy() for _, _, lo, hi in self.values[name]]

    def _msgs_between(self, src: np.ndarray, dst: list[tuple[int, int, int, int, int, int]]) -> np.ndarray:
        """Messages from segments ``src`` [k, 4] to destinations (x, y, lo, hi, ext dir, ext len)."""
        out = []
        for x, y, lo, hi, ed, el in dst:
            for k in np.nonzero((src[:, 2] < hi) & (src[:, 3] > lo))[0]:
                words = min(hi, src[k, 3]) - max(lo, src[k, 2])
                if (src[k, 0], src[k, 1]) != (x, y) or el > 0:
                    out.append((src[k, 0], src[k, 1], x, y, words, ed, el))
        return np.array(out, np.int64).reshape(-1, 7)

    def _mcast_transfer(self, value: str, grid: str) -> Transfer:
        key = ("mcast", value, grid)
        T = self._cache.get(key)
        if T is None:
            g = self.roles[grid]
            cb = g["col_bounds"]
            dst = [(g["x"] + j, g["y"], cb[j], cb[j + 1], S, g["r"] - 1) for j in range(g["c"])]
            T = self._cache[key] = Transfer(self._msgs_between(self.values[value], dst))
        return T

    def _move_transfer(self, src: str, dst: str) -> Transfer:
        key = ("move", src, dst)
        T = self._cache.get(key)
        if T is None:
            d = [(x, y, lo, hi, -1, 0) for x, y, lo, hi in self.values[dst]]
            T = self._cache[key] = Transfer(self._msgs_between(self.values[src], d))
        return T

    def _reduce_transfer(self, grid: str) -> Transfer:
        key = ("reduce", grid)
        T = self._cache.get(key)
        if T is None:
            g = self.roles[grid]
            msgs = [(g["x"] + j, g["y"] + i, g["x"] + j + 1, g["y"] + i, g["_tr"][i], -1, 0)
                    for i in range(g["r"]) for j in range(g["c"] - 1)]
            # a pipelined chain: each PE adds the incoming words to its own and forwards them (hop + add)
            T = self._cache[key] = Transfer(np.array(msgs, np.int64).reshape(-1, 7), latency=2 * (g["c"] - 1))
        return T

    def _chain_transfer(self, value: str) -> Transfer:
        """All-reduce of one word over the distinct PEs holding ``value``: a chain there and back."""
        key = ("chain", value)
        T = self._cache.get(key)
        if T is None:
            pes = list(dict.fromkeys((int(x), int(y)) for x, y, _, _ in self.values[value]))
            msgs = [(a[0], a[1], b[0], b[1], 1, -1, 0) for a, b in zip(pes, pes[1:])]
            msgs += [(b[0], b[1], a[0], a[1], 1, -1, 0) for a, b in zip(pes, pes[1:])]
            hops = sum(abs(a[0] - b[0]) + abs(a[1] - b[1]) + 1 for a, b in zip(pes, pes[1:]))
            T = self._cache[key] = Transfer(np.array(msgs, np.int64).reshape(-1, 7), latency=2 * hops)
        return T

    # ------------------------------------------------------------------------------------------ ops
    def _mcast(self, vals, tok, value: str, grid: str, t: tuple[float, int]) -> None:
        g = self.roles[grid]
        st = self._start(t, self._role(grid))
        end = self._reserve(self._mcast_transfer(value, grid), st[0])
        self.clk[grid] = (end, self._rec(tok, "mcast", grid, st, end))
        if self.numerics:
            cb = g["col_bounds"]
            g["_x"] = [self._gather(vals, value, cb[j], cb[j + 1]) for j in range(g["c"])]

    def _gemv(self, tok, grid: str) -> None:
        g = self.roles[grid]
        st = self._role(grid)
        tile = float((g["_tr"].max()) * (g["_tc"].max()))
        end = st[0] + self._compute(tile, tile * 4)
        self.clk[grid] = (end, self._rec(tok, "gemv", grid, st, end))
        if self.numerics:
            T = self.p[grid + ".tiles"]
            xs = np.zeros((g["c"], T.shape[3]), F32)
            for j, x in enumerate(g["_x"]):
                xs[j, :x.size] = x
            g["_part"] = np.einsum("rcnk,ck->rcn", T, xs)

    def _reduce(self, vals, tok, grid: str, out: str, bias: str | None) -> tuple[float, int]:
        g = self.roles[grid]
        st = self._role(grid)
        end = self._reserve(self._reduce_transfer(grid), st[0])
        rid = self._rec(tok, "reduce", grid, st, end)
        self.clk[grid] = (end, rid)
        if self.numerics:
            part = g["_part"]
            acc = part[:, 0].copy()
            for j in range(1, g["c"]):                 # the chain, west to east
                acc += part[:, j]
            segs = []
            rb = g["row_bounds"]
            for i in range(g["r"]):
                off = 0
                for (coff, _), b in zip(g["chunks"], rb):
                    n = b[i + 1] - b[i]
                    if n > 0:
                        v = acc[i, off:off + n].copy()
                        if bias:
                            v += self.p[bias][coff + b[i]:coff + b[i + 1]]
                        segs.append(v)
                    off += n
            vals[out] = segs
        return end, rid

    def _exec(self, c: dict[str, Any], op: dict[str, Any]) -> None:
        """Execute one op for the token of context ``c`` (its values, their ready times, slot, position)."""
        vals, ready, tok, token, slot, pos, t0 = (c["vals"], c["ready"], c["tok"], c["token"], c["slot"], c["pos"],
                                                  c["t0"])
        m = self.m
        k = op["op"]
        if k == "embed":
            g = self.roles[op["grid"]]
            rb = g["row_bounds"][0]
            i = int(np.searchsorted(rb, token, side="right") - 1)
            msgs = [(g["x"] + j, g["y"] + i, g["x"] + j, g["y"], g["_tc"][j], -1, 0) for j in range(g["c"])]
            st = (t0, -1)        # a read and a transfer; the table's PEs interleave it with the LM head's work
            end = self._reserve(Transfer(np.array(msgs, np.int64)), st[0])
            ready[op["out"]] = (end, self._rec(tok, "embed", g["name"], st, end))
            if self.numerics:
                T = self.p[g["name"] + ".tiles"]
                vals[op["out"]] = [T[i, j, token - rb[i], :g["_tc"][j]].copy() for j in range(g["c"])]
        elif k == "norm":
            segs = self.values[op["in"]]
            n_max = float((segs[:, 3] - segs[:, 2]).max())
            st = ready[op["in"]]
            t = st[0] + self._compute(n_max, 0, n_max, 1)
            t = self._reserve(self._chain_transfer(op["in"]), t)
            end = t + self._compute(0, 0, 2 * n_max)
            ready[op["out"]] = (end, self._rec(tok, "norm", op["in"], st, end))
            if self.numerics:
                ss = F32(0)
                for v in vals[op["in"]]:                     # the chain, PE by PE
                    ss = F32(ss + np.dot(v, v))
                D = int(segs[:, 3].max())
                inv = F32(1) / np.sqrt(F32(ss) / F32(D) + F32(op["eps"]))
                w = self.p[op["w"]]
                vals[op["out"]] = [w[lo:hi] * (v * inv) for v, (_, _, lo, hi) in zip(vals[op["in"]], segs)]
        elif k == "mcast":
            self._mcast(vals, tok, op["in"], op["grid"], ready[op["in"]])
        elif k == "gemv":
            self._gemv(tok, op["grid"])
        elif k == "reduce":
            ready[op["out"]] = self._reduce(vals, tok, op["grid"], op["out"], op.get("bias"))
        elif k == "move":
            st = ready[op["in"]]
            end = self._reserve(self._move_transfer(op["in"], op["out"]), st[0])
            ready[op["out"]] = (end, self._rec(tok, "move", op["in"], st, end))
            if self.numerics:
                segs = self.values[op["out"]]
                vals[op["out"]] = [self._gather(vals, op["in"], lo, hi) for _, _, lo, hi in segs]
        elif k == "add":
            st = self._start(ready[op["a"]], ready[op["b"]])
            segs = self.values[op["a"]]
            end = st[0] + self._compute(0, 0, float((segs[:, 3] - segs[:, 2]).max()))
            ready[op["out"]] = (end, self._rec(tok, "add", op["a"], st, end))
            if self.numerics:
                vals[op["out"]] = [a + b for a, b in zip(vals[op["a"]], vals[op["b"]])]
        elif k in ("conv", "recurrence", "swiglu"):
            g = self.roles[op["grid"]]
            st = self._start(ready[op["in"]], self._role(g["name"]))
            ch = float(max(b[1] - b[0] for b in zip(g["row_bounds"][0], g["row_bounds"][0][1:])))
            cost = {"conv": (2 + 2 * op.get("L", 3)) * ch, "recurrence": 6 * ch, "swiglu": 3 * ch}[k]
            end = st[0] + self._compute(0, 0, cost, ch if k != "conv" else 0)
            rid = self._rec(tok, k, g["name"], st, end)
            self.clk[g["name"]] = (end, rid)
            ready[op["out"]] = (end, rid)
            if self.numerics:
                vals[op["out"]] = self._elementwise(op, g, vals[op["in"]], slot)
        elif k == "attn":
            ready[op["out"]] = self._attn(vals, tok, op, slot, pos, ready[op["in"]])
        elif k == "moe":
            ready[op["out"]] = self._moe(vals, tok, op, ready)
        elif k == "logits":
            st = ready[op["in"]]
            V = int(self.values[op["in"]][:, 3].max())
            io = V * 4 / (m["io_gbs"] * 1e9) * m["clock_ghz"] * 1e9
            end = st[0] + io
            vals["__end__"] = (end, self._rec(tok, "logits", op["in"], st, end))
            if self.numerics:
                vals["__logits__"] = self._gather(vals, op["in"], 0, V)
        else:
            raise RuntimeLoadError(f"mesh program: unknown op {k!r}")

    def _deps(self) -> tuple[list[list[int]], list[list[int]]]:
        """Per op of the program: the earlier ops it waits for (producers of its inputs, the previous op on each
        role it uses), and the reverse."""
        if hasattr(self, "_dep_cache"):
            return self._dep_cache
        ops = self.prog["ops"]
        producer: dict[str, int] = {}
        last_on: dict[str, int] = {}
        deps: list[list[int]] = []
        for k, op in enumerate(ops):
            d = {producer[op[key]] for key in ("in", "a", "b", "scores") if key in op and op[key] in producer}
            roles = [op[key] for key in ("grid", "kv") if key in op]
            roles += [g for pair in op.get("experts", []) for g in pair]
            d |= {last_on[r] for r in roles if r in last_on}
            deps.append(sorted(d))
            for r in roles:
                last_on[r] = k
            if "out" in op:
                producer[op["out"]] = k
        succ: list[list[int]] = [[] for _ in ops]
        for k, d in enumerate(deps):
            for j in d:
                succ[j].append(k)
        self._dep_cache = (deps, succ)
        return self._dep_cache

    def _elementwise(self, op: dict, g: dict, segs: list[np.ndarray], slot: int) -> list[np.ndarray]:
        k = op["op"]
        out = []
        nch = len(g["chunks"])
        rb0 = g["row_bounds"][0]
        per_row = [segs[i * nch:(i + 1) * nch] for i in range(len(segs) // nch)]
        order = op.get("gates", range(nch))        # chunk feeding each gate (B, C, x / a, b, c, x / gate, up)
        for i, parts in enumerate(per_row):
            parts = [parts[j] for j in order]
            if k == "swiglu":
                gt, up = parts
                out.append((gt / (F32(1) + np.exp(-gt))) * up)
            elif k == "conv":
                B, C, x = parts
                st = self.conv[op["state"]][i]
                conv, st[slot] = causal_conv((B * x)[None, :], st[slot], self.p[op["w"]][rb0[i]:rb0[i + 1], 0, :],
                                             self.p[op["bias"]][rb0[i]:rb0[i + 1]] if "bias" in op else None)
                out.append(C * conv[0])
            else:                                                               # recurrence
                a, b, c, x = parts
                a = F32(1) / (F32(1) + np.exp(-a))
                st = self.conv[op["state"]][i]
                h = a * st[slot][:, 0] + b * x
                st[slot][:, 0] = h
                out.append(c * h)
        return out

    def _attn(self, vals, tok, op, slot: int, pos: int, rd: tuple[float, int]) -> tuple[float, int]:
        g, kv = self.roles[op["grid"]], self.roles[op["kv"]]
        hd, grp, b, mrows = kv["head_dim"], kv["groups"], kv["b"], kv["m"]
        nkv = kv["kv_heads"]
        st = self._start(rd, self._role(g["name"]), self._role(kv["name"]))
        t = st[0] + self._compute((grp + 1) * hd * 4, 0, (grp + 1) * hd * 4, (grp + 1) * (hd + 1))
        ring = op.get("window")              # a sliding window: position pos lives in ring row pos % window
        last = min(pos, ring - 1) if ring else pos           # the highest ring row holding a key this query sees
        blk = (pos % ring if ring else pos) // b
        nb = last // b + 1
        xe = g["x"] + g["c"] - 1
        # k, v to the PE owning the position; q along the head's strip rows (participating blocks only)
        store, qm, back = [], [], []
        rows = min(mrows, nb)
        for h in range(nkv):
            ye = g["y"] + h
            ox, oy = kv["x"] + blk // mrows, kv["y"] + h * mrows + blk % mrows
            store.append((xe, ye, ox, oy, 2 * hd, -1, 0))
            rx, ry = kv["x"], kv["y"] + h * mrows
            qm.append((xe, ye, rx, ry, grp * hd, S, rows - 1))            # to the strip, down its first column
            back.append((rx, ry + rows - 1, rx, ry, grp * (hd + 2), -1, 0))  # combine up the first column
            back.append((rx, ry, xe, ye, grp * (hd + 2), -1, 0))            # and home
            for t_ in range(rows):
                cols = -(-(nb - t_) // mrows)
                if cols > 1:
                    qm.append((rx, ry + t_, rx, ry + t_, grp * hd, E, cols - 1))   # along each strip row
                    back.append((rx + cols - 1, ry + t_, rx, ry + t_, grp * (hd + 2), -1, 0))
        t = self._reserve(Transfer(np.array(store, np.int64)), t)
        t = self._reserve(Transfer(np.array(qm, np.int64)), t)
        n_here = min(b, last + 1)
        t += self._compute(2 * n_here * grp * hd, 2 * n_here * hd * kv["kv_bytes"], 2 * n_here * grp, n_here * grp)
        cols = -(-nb // mrows)
        dist = abs(kv["x"] - xe) + abs(kv["y"] - g["y"])
        end = self._reserve(Transfer(np.array(back, np.int64), latency=2 * (cols + mrows) + dist), t)
        rid = self._rec(tok, "attn", kv["name"], st, end)
        self.clk[g["name"]] = self.clk[kv["name"]] = (end, rid)
        if self.numerics:
            K, Vc = self.kv[kv["name"]]
            qn, kn = self.p[op["q_norm"]], self.p[op["k_norm"]]
            out = []
            segs = vals[op["in"]]
            per = 4 if op.get("gated") else 3               # q, k, v (and the gate logits) per KV head's row
            inv = rope_inv_freq(hd, op["theta"], op.get("rope_angles"), op.get("rope_factor", 1.0))
            at = np.array([pos])
            for h in range(nkv):
                q, k, v = segs[per * h], segs[per * h + 1], segs[per * h + 2]
                q = rope(_rmsnorm(q.reshape(1, grp, hd), qn, op["eps"]), at, inv)[0]
                k = rope(_rmsnorm(k.reshape(1, 1, hd), kn, op["eps"]), at, inv)[0, 0]
                row = pos % ring if ring else pos
                K[h, blk, slot, row % b] = k
                Vc[h, blk, slot, row % b] = v
                m_run = l_run = o_run = None
                for p_ in range(nb - 1, -1, -1):               # the chain back to the edge PE
                    n = min(b, last + 1 - p_ * b)
                    Kb = K[h, p_, slot, :n].astype(F32)
                    Vb = Vc[h, p_, slot, :n].astype(F32)
                    s = (q @ Kb.T) * F32(hd ** -0.5)             # [grp, n]
                    mx = s.max(axis=1)
                    e = np.exp(s - mx[:, None])
                    lsum, o = e.sum(axis=1), e @ Vb
                    if m_run is None:
                        m_run, l_run, o_run = mx, lsum, o
                    else:
                        mn = np.maximum(m_run, mx)
                        a1, a2 = np.exp(m_run - mn), np.exp(mx - mn)
                        l_run = l_run * a1 + lsum * a2
                        o_run = o_run * a1[:, None] + o * a2[:, None]
                        m_run = mn
                o_run = o_run / l_run[:, None]
                if op.get("gated"):                            # each head's output times its sigmoid gate
                    o_run = o_run * (F32(1) / (F32(1) + np.exp(-segs[per * h + 3])))[:, None]
                out.append(o_run.reshape(-1).astype(F32))
            vals[op["out"]] = out
        return end, rid

    def _moe(self, vals, tok, op, ready) -> tuple[float, int]:
        router = self.roles[op["grid"]]
        E_ = len(op["experts"])
        k = op["top_k"]
        head = self.values[op["scores"]][0]
        # scores gathered on the router's first edge PE, top-k there
        st = ready[op["scores"]]
        d = [(int(head[0]), int(head[1]), 0, E_, -1, 0)]
        t = self._reserve(Transfer(self._msgs_between(self.values[op["scores"]], d)), st[0])
        t += self._compute(0, 0, E_ * (2 + k), E_)
        rid = self._rec(tok, "moe", router["name"], st, t)
        if self.numerics:
            sc = self._gather(vals, op["scores"], 0, E_)
            scores = (F32(1) / (F32(1) + np.exp(-sc))) if op["scoring"] == "sigmoid" else _softmax(sc)
            choose = scores + self.p[op["expert_bias"]] if "expert_bias" in op else scores
            sel = np.argsort(-choose, kind="stable")[:k]
            wts = scores[sel]
            if op["norm_topk_prob"]:
                wts = wts / (wts.sum() + F32(op["eps"]))
            wts = wts * F32(op["scale"])
        else:
            sel = np.array([(self._rr + j) % E_ for j in range(k)])
            self._rr += k
            wts = np.ones(k, F32)
        acc = [np.zeros(hi - lo, F32) for _, _, lo, hi in self.values[op["in"]]] if self.numerics else None
        ends = []
        base = op["out"]
        for j, e in enumerate(sel):
            gu, dn = op["experts"][int(e)]
            self._mcast(vals, tok, op["in"], gu, self._start((t, rid), ready[op["in"]]))
            self._gemv(tok, gu)
            self._reduce(vals, tok, gu, f"{base}.e{e}.h13", None)
            g = self.roles[gu]
            s2 = self._role(gu)
            ch = float(max(g["_tr"])) / 2
            e2 = s2[0] + self._compute(0, 0, 3 * ch, ch)
            self.clk[gu] = (e2, self._rec(tok, "swiglu", gu, s2, e2))
            if self.numerics:
                sw = {"op": "swiglu", "gates": op.get("gates", [0, 1])}
                vals[f"{base}.e{e}.h"] = self._elementwise(sw, g, vals[f"{base}.e{e}.h13"], 0)
            self._mcast(vals, tok, f"{base}.e{e}.h", dn, self.clk[gu])
            self._gemv(tok, dn)
            r_end = self._reduce(vals, tok, dn, f"{base}.e{e}.y", None)
            m_end = self._reserve(self._move_transfer(f"{base}.e{e}.y", f"{base}.e{e}.y@"), r_end[0])
            ends.append((m_end, self._rec(tok, "move", dn, r_end, m_end)))
            if self.numerics:
                segs = self.values[f"{base}.e{e}.y@"]
                moved = [self._gather(vals, f"{base}.e{e}.y", lo, hi) for _, _, lo, hi in segs]
                for a, y in zip(acc, moved):
                    a += wts[j] * y
        done = max(ends, key=lambda x: x[0])
        segs = self.values[op["in"]]
        end = done[0] + self._compute(0, 0, k * float((segs[:, 3] - segs[:, 2]).max()))
        if self.numerics:
            vals[op["out"]] = acc
        return end, self._rec(tok, "moe", router["name"], done, end)

    # ---------------------------------------------------------------------------------------- calls
    def step(self, entry: str, tokens: Sequence[int], slots: Sequence[int], pos: Sequence[int],
             logits: np.ndarray | None = None) -> dict[str, Any]:
        """One engine call: ``prefill`` (tokens of one slot from pos[0]; logits of the last token in row 0) or
        ``decode`` (one token per slot; logits row per token). Returns the call's cycle estimate."""
        tokens = [int(t) for t in tokens]
        if entry not in ("prefill", "decode") or not tokens:
            raise EngineError(f"wafer: bad call {entry!r} with {len(tokens)} tokens")
        for s, p in zip(slots, pos):
            if not 0 <= s < self.slots:
                raise EngineError(f"wafer: sequence slot {s} outside the {self.slots} slots placed on the mesh")
            if not 0 <= p < self.context:
                raise EngineError(f"wafer: position {p} outside the context of {self.context} placed on the mesh")
        V = int(self.prog["vocab_size"])
        if self.numerics and any(not 0 <= t < V for t in tokens):
            raise EngineError(f"wafer: token ids must lie in [0, {V})")
        if entry == "prefill" and int(pos[0]) == 0:
            self.reset_slot(int(slots[0]))
        t_call = self.now
        first = len(self.records)
        # Dataflow order: an op runs once its inputs are produced and its roles are done with the previous op; the
        # tokens of a call pass every op in order (none overtakes another). Among the runnable ops the one whose
        # inputs were ready first runs next, so links are reserved in (nearly) time order.
        import heapq

        ops = self.prog["ops"]
        deps, succ = self._deps()
        ctxs, vals = [], []
        for i, tkn in enumerate(tokens):
            slot = int(slots[0] if entry == "prefill" else slots[i])
            p = int(pos[0]) + i if entry == "prefill" else int(pos[i])
            vals.append({})
            ctxs.append({"vals": vals[i], "ready": {}, "tok": len(self.calls) * 100000 + i, "token": tkn,
                         "slot": slot, "pos": p, "t0": t_call, "end": {}})
        left = [[len(d) + (1 if i else 0) for d in deps] for i in range(len(tokens))]

        def est(i: int, k: int) -> float:
            e = ctxs[i]["end"]
            return max([e[j] for j in deps[k]] + [ctxs[i - 1]["end"][k] if i else t_call, t_call])

        heap = [(t_call, 0, k) for k in range(len(ops)) if left[0][k] == 0]
        heapq.heapify(heap)
        while heap:
            _, i, k = heapq.heappop(heap)
            c = ctxs[i]
            before = len(self.records)
            self._exec(c, ops[k])
            c["end"][k] = max((r[4] for r in self.records[before:]), default=t_call)
            for j in succ[k]:
                left[i][j] -= 1
                if left[i][j] == 0:
                    heapq.heappush(heap, (est(i, j), i, j))
            if i + 1 < len(tokens):
                left[i + 1][k] -= 1
                if left[i + 1][k] == 0:
                    heapq.heappush(heap, (est(i + 1, k), i + 1, k))
        ends = [v["__end__"][0] for v in vals]
        if logits is not None and self.numerics:
            for i, v in enumerate(vals):
                if entry == "decode":
                    logits[i] = v["__logits__"]
                elif i == len(tokens) - 1:
                    logits[0] = v["__logits__"]
        self.now = max(ends)
        call = {"entry": entry, "tokens": len(tokens), "cycles": self.now - t_call,
                "seconds": (self.now - t_call) / (self.m["clock_ghz"] * 1e9), "first_record": first,
                "last_record": len(self.records)}
        self.calls.append(call)
        return call

    def breakdown(self, call: dict[str, Any] | None = None) -> dict[str, float]:
        """Cycles on the critical path of a call (default: the last), by category: walking back from the last
        logits through the op whose end each op waited for; time between ops counts as 'waiting'."""
        call = call or self.calls[-1]
        recs = self.records
        lo, hi = call["first_record"], call["last_record"]
        last = max((i for i in range(lo, hi) if recs[i][1] == "logits"), key=lambda i: recs[i][4])
        out: dict[str, float] = {}
        i = last
        while i >= lo:
            tok, op, where, start, end, cause = recs[i]
            cat = CATEGORY.get(op, op)
            out[cat] = out.get(cat, 0.0) + (end - start)
            if cause < lo:
                break
            gap = start - recs[cause][4]
            if gap > 0:
                out["waiting"] = out.get("waiting", 0.0) + gap
            i = cause
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def timeline(self, call: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The ops of a call as (op, where, layer, start, end) in cycles from the call's start."""
        call = call or self.calls[-1]
        t0 = min(r[3] for r in self.records[call["first_record"]:call["last_record"]])
        lay = self.prog.get("layers", {})
        out = []
        for tok, op, where, start, end, _ in self.records[call["first_record"]:call["last_record"]]:
            role = where if where in self.roles else None
            out.append({"token": tok % 100000, "op": op, "where": where,
                        "layer": lay.get(role, "io") if role else _value_layer(where, self.prog),
                        "start": start - t0, "end": end - t0})
        return out

    def link_check(self) -> dict[str, float]:
        """From the trace: the most words any link carried in one reservation over its length (<= 1), and
        whether reservations of one link ever overlapped (they must not)."""
        if self.trace is None:
            raise EngineError("link_check needs MeshSim(trace=True)")
        worst, overlaps = 0.0, 0
        per_link: dict[tuple, list[tuple[float, float]]] = {}
        for t0, t1, x0, y0, loads in self.trace:
            d, ys, xs = np.nonzero(loads)
            if d.size:
                worst = max(worst, float(loads[d, ys, xs].max() / max(t1 - t0, 1e-9)))
            for a, b, c in zip(d, ys + y0, xs + x0):
                per_link.setdefault((int(a), int(b), int(c)), []).append((t0, t1))
        for iv in per_link.values():
            iv.sort()
            overlaps += sum(1 for (s0, e0), (s1, _) in zip(iv, iv[1:]) if s1 < e0 - 1e-9)
        return {"max_words_per_cycle": worst, "overlapping_reservations": overlaps, "links_used": len(per_link),
                "transfers": len(self.trace)}


def _value_layer(v: str, prog: dict) -> str:
    """The layer of the IR node a program value belongs to ('%12.h13' -> node 12; '%3@%6' -> node 6)."""
    node = v.split("@")[-1].lstrip("%").split(".")[0]
    return prog.get("node_layer", {}).get(node, "io")


def _rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(x * x, axis=-1, keepdims=True)
    return w * (x / np.sqrt(var + F32(eps)))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def load_program(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        prog = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RuntimeLoadError(f"{p}: unreadable mesh program ({e})") from None
    if not isinstance(prog, dict) or prog.get("version") != 1:
        raise RuntimeLoadError(f"{p}: not a version-1 mesh program")
    for key in ("machine", "roles", "values", "ops", "slots", "context", "vocab_size", "param_order"):
        if key not in prog:
            raise RuntimeLoadError(f"{p}: mesh program has no {key!r}")
    return prog


def verify_library(path: Path, m: dict[str, Any], nargs: dict[str, int]) -> str:
    """The mesh program as data: it parses, and every entry passes its parameters in the program's order."""
    prog = load_program(path)
    for k, n in nargs.items():
        if n != 4 + len(prog["param_order"]):
            raise RuntimeLoadError(f"{path.name}: the mesh program takes {len(prog['param_order'])} parameters, "
                                   f"the plan passes {n - 4}")
    return "mesh program (simulated)"


class WaferDriver(HostMemory):
    """The plan executor's view of the simulator: host numpy memory, one 'kernel' per entry (a whole step)."""

    name = "wafer"
    keeps_state = True           # sequence state lives in the simulated PEs, not in the engine's state buffers
    Simulator = MeshSim          # the compile flow estimates decode steps with it (targets may not import runtime)

    def __init__(self, trace: bool = False):
        self.sim: MeshSim | None = None
        self.trace = trace

    def load_library(self, path: Path) -> dict[str, Any]:
        return load_program(path)

    def function(self, lib: dict[str, Any], name: str) -> Any:
        if name not in ("prefill", "decode"):
            raise RuntimeLoadError(f"kernel {name!r} is not an entry of the mesh program")
        names = lib["param_order"]

        def call(tokens, slots, pos, logits, *params):
            if self.sim is None:
                if len(params) != len(names):
                    raise RuntimeLoadError(f"mesh program wants {len(names)} parameters, got {len(params)}")
                self.sim = MeshSim(lib, dict(zip(names, params)), trace=self.trace)
            n = tokens.shape[0]
            self.sim.step(name, tokens[:n], slots[:n] if name == "decode" else slots[:1], pos[:n] if name == "decode"
                          else pos[:1], logits)

        return call
