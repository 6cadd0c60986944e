"""The reference interpreter: executes IR with numpy, float32, one sequence at a time.

It is the oracle for every later stage. ``run(tokens, state)`` processes T new tokens of one sequence given its
state (an empty state for prefill, then T=1 per decode step, or any chunking in between) and updates the state
in place: conv state keeps the last L_cache-1 gated inputs, attention appends to its KV cache (a sliding window
keeps its last window - 1 keys).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..mixers import causal_conv, gelu, grid_conv, merge_positions, rope, rope_2d, rope_inv_freq
from .errors import LfmcError
from .graph import Gate, Graph, Node
from .ops import state_types
from .quant import dequantize, fake_quantize_activations, round_bf16
from .verify import verify
from .weights import check_weights

F32 = np.float32


def kv_round(x: np.ndarray, kvd: str) -> np.ndarray:
    """Rows [..., hd] as the KV cache stores them, back in float32: f16 rounding; i8: per row codes
    rint(x * 127 / absmax) times the scale absmax * (1 / 127) (float32 arithmetic, in the kernels' order; a zero
    row stays zero)."""
    if kvd == "f16":
        return x.astype(np.float16).astype(F32)
    if kvd == "i8":
        amax = np.abs(x).max(axis=-1, keepdims=True).astype(F32)
        inv = np.where(amax > 0, F32(127) / np.where(amax > 0, amax, F32(1)), F32(0)).astype(F32)
        return (np.rint(x.astype(F32) * inv) * (amax * F32(1 / 127))).astype(F32)
    return x.astype(F32)


@dataclass
class SequenceState:
    """Per-sequence state: the number of tokens seen and each stateful node's tensors."""

    pos: int = 0
    tensors: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(a.nbytes for d in self.tensors.values() for a in d.values())


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (F32(1) + np.exp(-x))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return F32(1) / (F32(1) + np.exp(-x))


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


_ACTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"identity": lambda x: x, "silu": _silu,
                                                       "sigmoid": _sigmoid, "softmax": _softmax}


def _zero_state(n: Node) -> dict[str, np.ndarray]:
    """A new sequence's state of a fixed-size token mixer (conv window, recurrence), shaped as its op schema
    says (:func:`lfmc.ir.ops.state_types`)."""
    return {k: np.zeros(tuple(int(d) for d in t.shape), F32) for k, t in state_types(n).items()}


def _rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    var = np.mean(x * x, axis=-1, keepdims=True)
    return w * (x / np.sqrt(var + F32(eps)))


def _rope_of(n: Node) -> np.ndarray:
    """The inverse frequencies of attention ``n``'s rotary embedding."""
    a = n.attrs
    return rope_inv_freq(a["head_dim"], a["rope_theta"], a.get("rope_angles"), a.get("rope_factor", 1.0))


class Interpreter:
    """Runs a verified graph with its weights."""

    def __init__(self, graph: Graph, weights: dict[str, np.ndarray],
                 observe_moe: Callable[[Node, np.ndarray, np.ndarray, np.ndarray], None] | None = None):
        """``observe_moe(node, chosen [T, k], weights [T, k], output norms [T, k])``, when given, sees every MoE
        layer's routing (calibration)."""
        self.observe_moe = observe_moe
        verify(graph)
        check_weights(graph, weights)
        self.graph = graph
        self.w = {k: np.asarray(v, dtype=F32) for k, v in weights.items()}
        for n in graph.nodes:                      # quantized weights run as what they stand for
            for role, p in n.params.items():
                if role + "_scale" in n.params:
                    z = n.params.get(role + "_zero")
                    self.w[p.name] = dequantize(weights[p.name], weights[n.params[role + "_scale"].name],
                                                weights[z.name] if z else None, p.type.dtype)
        self._impl: dict[str, Callable[[Node, list[np.ndarray], SequenceState], np.ndarray]] = {
            "embedding": self._embedding, "rmsnorm": self._rmsnorm, "add": lambda n, a, s: a[0] + a[1],
            "linear": self._linear_op, "lm_head": self._linear_op, "short_conv": self._short_conv,
            "attention": self._attention, "gated_mlp": self._gated_mlp, "moe": self._moe,
            "linear_recurrence": self._recurrence, "layernorm": self._layernorm, "pos_embed": self._pos_embed,
            "bidir_attention": self._bidir_attention, "mlp": self._mlp, "pixel_unshuffle": self._pixel_unshuffle,
            "image_merge": self._image_merge, "grid_conv": self._grid_conv,
            "vision_attention": self._vision_attention, "merge_tokens": self._merge_tokens,
        }

    def new_state(self) -> SequenceState:
        return SequenceState()

    def run(self, tokens: np.ndarray | list[int], state: SequenceState | None = None,
            image: np.ndarray | None = None) -> np.ndarray:
        """Logits [T, vocab] for ``tokens``, continuing ``state`` (updated in place; fresh if None). ``image``: for a
        vision-language decoder, image embeddings [T, D] aligned with the tokens (read at image-token positions)."""
        state = state if state is not None else self.new_state()
        toks = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if toks.size == 0:
            raise LfmcError("run() needs at least one token")
        env: dict[str, np.ndarray] = {self.graph.inputs[0][0]: toks}
        if len(self.graph.inputs) > 1:              # a VL decoder's image rows, aligned with the tokens
            name, t = self.graph.inputs[1]
            rows = np.zeros((toks.size, int(t.shape[1])), F32) if image is None else np.asarray(image, F32)
            if rows.shape != (toks.size, int(t.shape[1])):
                raise LfmcError(f"image rows {rows.shape} do not match {toks.size} tokens of width {t.shape[1]}")
            env[name] = rows
        elif image is not None:
            raise LfmcError(f"graph {self.graph.name} takes no image rows")
        out = self._evaluate(env, state)
        state.pos += len(toks)
        return out

    def evaluate(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's output for named ``inputs`` (a stateless graph: a vision encoder and its projector)."""
        want = [n for n, _ in self.graph.inputs]
        if sorted(inputs) != sorted(want):
            raise LfmcError(f"graph {self.graph.name} takes inputs {want}, got {sorted(inputs)}")
        return self._evaluate(dict(inputs), self.new_state())

    def _evaluate(self, env: dict[str, np.ndarray], state: SequenceState) -> np.ndarray:
        for n in self.graph.nodes:
            env[n.name] = self._impl[n.op](n, [env[i] for i in n.inputs], state)
        return env[self.graph.outputs[0]]

    # --- helpers
    def _p(self, n: Node, role: str) -> np.ndarray:
        return self.w[n.params[role].name]

    def _proj(self, n: Node, role: str, x: np.ndarray) -> np.ndarray:
        if "act_quant" in n.attrs and role + "_scale" in n.params:       # int8 activations (lfmc/ir/quant.py)
            x = fake_quantize_activations(x, n.attrs["act_quant"])
        elif n.attrs.get("act_dtype") == "bf16" and n.params[role].type.dtype == "bf16":     # bf16 activations
            x = round_bf16(x)
        y = x @ self._p(n, role).T
        if role + "_bias" in n.params:
            y = y + self._p(n, role + "_bias")
        return y

    def _gate(self, n: Node, gate: str, projected: dict[str, np.ndarray]) -> np.ndarray:
        g: Gate = n.liv.featurizer[gate]
        y = projected[g.proj]
        w = y.shape[-1] // g.chunks
        return _ACTS[g.act](y[..., g.chunk * w:(g.chunk + 1) * w])

    # --- ops
    def _embedding(self, n: Node, a: list[np.ndarray], s: SequenceState) -> np.ndarray:
        w = self._p(n, "weight")
        if a[0].min() < 0 or a[0].max() >= w.shape[0]:
            raise LfmcError(f"token id out of range [0, {w.shape[0]}) at %{n.name}")
        return w[a[0]]

    def _rmsnorm(self, n: Node, a: list[np.ndarray], s: SequenceState) -> np.ndarray:
        return _rmsnorm(a[0], self._p(n, "weight"), n.attrs["eps"])

    def _linear_op(self, n: Node, a: list[np.ndarray], s: SequenceState) -> np.ndarray:
        return self._proj(n, "weight", a[0])

    def _short_conv(self, n: Node, a: list[np.ndarray], s: SequenceState) -> np.ndarray:
        proj = {"in_proj": self._proj(n, "in_proj", a[0])}
        bx = self._gate(n, "B", proj) * self._gate(n, "x", proj)               # [T, D]
        st = s.tensors.setdefault(n.name, _zero_state(n))
        conv, st["conv"] = causal_conv(bx, st["conv"], self._p(n, "conv")[:, 0, :],
                                       self._p(n, "conv_bias") if "conv_bias" in n.params else None)
        return self._proj(n, "out_proj", self._gate(n, "C", proj) * conv)

    def _attention(self, n: Node, a: list[np.ndarray], s: SequenceState) -> np.ndarray:
        x = a[0]
        T = x.shape[0]
        h, kv, hd, eps = n.attrs["heads"], n.attrs["kv_heads"], n.attrs["head_dim"], n.attrs["eps"]
        window = n.attrs.get("window")
        pos = np.arange(s.pos, s.pos + T)
        q = _rmsnorm(self._proj(n, "q_proj", x).reshape(T, h, hd), self._p(n, "q_norm"), eps)
        k = _rmsnorm(self._proj(n, "k_proj", x).reshape(T, kv, hd), self._p(n, "k_norm"), eps)
        v = self._proj(n, "v_proj", x).reshape(T, kv, hd)
        inv = _rope_of(n)
        q, k = rope(q, pos, inv), rope(k, pos, inv)
        st = s.tensors.setdefault(n.name, {"k": np.zeros((0, kv, hd), F32), "v": np.zeros((0, kv, hd), F32)})
        kvd = n.attrs.get("kv_dtype", "f32")                                  # the cache's storage rounding
        first = s.pos - st["k"].shape[0]                                     # position of the oldest key kept
        K = np.concatenate([st["k"], kv_round(k, kvd)], axis=0)              # [keys, kv, hd]
        V = np.concatenate([st["v"], kv_round(v, kvd)], axis=0)
        grp = h // kv
        qg = q.reshape(T, kv, grp, hd)
        scores = np.einsum("tkgd,ckd->kgtc", qg, K) * F32(hd ** -0.5)            # [kv, grp, T, keys]
        kpos = np.arange(first, s.pos + T)
        mask = kpos[None, :] > pos[:, None]                                      # causal over absolute positions
        if window is not None:                                                   # and within the window
            mask |= kpos[None, :] <= pos[:, None] - window
        scores = np.where(mask, -np.inf, scores)
        p = _softmax(scores, axis=-1)
        o = np.einsum("kgtc,ckd->tkgd", p, V).reshape(T, h, hd)
        if "g_proj" in n.params:                                                 # per-head sigmoid output gate
            o = o * self._gate(n, "g", {"g_proj": self._proj(n, "g_proj", x)})[:, :, None]
        drop = 0 if window is None else max(0, K.shape[0] - (window - 1))      # a window keeps its last keys
        st["k"], st["v"] = K[drop:], V[drop:]
        return self._proj(n, "out_proj", o.reshape(T, h * hd).astype(F32))

    def _recurrence(self, n: Node, a: list[np.ndarray], s: SequenceState) -> np.ndarray:
        proj = {"in_proj": self._proj(n, "in_proj", a[0])}
        ga, gb, gc, gx = (self._gate(n, k, proj) for k in ("a", "b", "c", "x"))
        st = s.tensors.setdefault(n.name, _zero_state(n))
        h = st["h"]
        ys = np.empty_like(a[0])
        for t in range(a[0].shape[0]):                 # the scan, step by step (the oracle, not the fast path)
            h = ga[t] * h + gb[t] * gx[t]
            ys[t] = gc[t] * h
        st["h"] = h
        return self._proj(n, "out_proj", ys)

    def _gated_mlp(self, n: Node, a: list[np.ndarray], s: SequenceState) -> np.ndarray:
        proj = {"w1": self._proj(n, "w1", a[0]), "w3": self._proj(n, "w3", a[0])}
        return self._proj(n, "w2", self._gate(n, "gate", proj) * self._gate(n, "up", proj))

    def _moe(self, n: Node, a: list[np.ndarray], s: SequenceState) -> np.ndarray:
        x = a[0]
        k = n.attrs["top_k"]
        scores = self._gate(n, "router", {"router": self._proj(n, "router", x)})  # [T, E]
        choose = scores + self._p(n, "expert_bias") if n.attrs["use_expert_bias"] else scores
        sel = np.argsort(-choose, axis=-1, kind="stable")[:, :k]                   # [T, k]
        wts = np.take_along_axis(scores, sel, axis=-1)
        if n.attrs["norm_topk_prob"]:
            wts = wts / (wts.sum(axis=-1, keepdims=True) + F32(n.attrs["topk_norm_eps"]))
        wts = wts * F32(n.attrs["routed_scaling_factor"])
        gu, dn = self._p(n, "gate_up"), self._p(n, "down")
        out = np.zeros_like(x)
        norms = np.zeros(sel.shape, F32)
        for t in range(x.shape[0]):
            for j in range(k):
                e = sel[t, j]
                proj = {"gate_up": gu[e] @ x[t]}
                hmid = self._gate(n, "gate", proj) * self._gate(n, "up", proj)
                y = wts[t, j] * (dn[e] @ hmid)
                norms[t, j] = np.linalg.norm(y)
                out[t] += y
        if self.observe_moe is not None:
            self.observe_moe(n, sel, wts, norms)
        return out

    # --- vision ops
    def _layernorm(self, n: Node, a: list[np.ndarray], s: SequenceState) -> np.ndarray:
        x = a[0]
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        return (x - mu) / np.sqrt(var + F32(n.attrs["eps"])) * self._p(n, "weight") + self._p(n, "bias")

    def _pos_embed(self, n: Node, a: list[np.ndarray], s: SequenceState) -> np.ndarray:
        return a[0] + a[1] @ self._p(n, "table")

    def _bidir_attention(self, n: Node, a: list[np.ndarray], s: SequenceState) -> np.ndarray:
        x = a[0]
        T = x.shape[0]
        h, hd = n.attrs["heads"], n.attrs["head_dim"]
        kv = n.attrs.get("kv_heads", h)
        q = self._proj(n, "q_proj", x).reshape(T, kv, h // kv, hd)
        k = self._proj(n, "k_proj", x).reshape(T, kv, hd)
        v = self._proj(n, "v_proj", x).reshape(T, kv, hd)
        p = _softmax(np.einsum("tkgd,ckd->kgtc", q, k) * F32(hd ** -0.5), axis=-1)
        o = np.einsum("kgtc,ckd->tkgd", p, v).reshape(T, h * hd)
        return self._proj(n, "out_proj", o.astype(F32))

    def _mlp(self, n: Node, a: list[np.ndarray], s: SequenceState) -> np.ndarray:
        return self._proj(n, "fc2", gelu(self._proj(n, "fc1", a[0]), n.attrs["act"] == "gelu_tanh"))

    def _pixel_unshuffle(self, n: Node, a: list[np.ndarray], s: SequenceState) -> np.ndarray:
        x, order = a
        f2 = n.attrs["factor"] ** 2
        if order.shape != (x.shape[0],) or x.shape[0] % f2 or order.min() < 0 or order.max() >= x.shape[0]:
            raise LfmcError(f"%{n.name}: merge order of {order.shape} for {x.shape[0]} patches")
        return x[order].reshape(x.shape[0] // f2, f2 * x.shape[1])

    def _image_merge(self, n: Node, a: list[np.ndarray], s: SequenceState) -> np.ndarray:
        emb, toks, img = a
        return np.where((toks == n.attrs["image_token"])[:, None], img, emb).astype(F32)

    def _grid_conv(self, n: Node, a: list[np.ndarray], s: SequenceState) -> np.ndarray:
        h, w = (int(v) for v in a[1])
        proj = {"in_proj": self._proj(n, "in_proj", a[0])}
        bx = self._gate(n, "B", proj) * self._gate(n, "x", proj)
        conv = grid_conv(bx, self._p(n, "conv")[:, 0], h, w, n.attrs["merge"])
        return self._proj(n, "out_proj", self._gate(n, "C", proj) * conv)

    def _vision_attention(self, n: Node, a: list[np.ndarray], s: SequenceState) -> np.ndarray:
        x = a[0]
        T = x.shape[0]
        h, kv, hd, eps = n.attrs["heads"], n.attrs["kv_heads"], n.attrs["head_dim"], n.attrs["eps"]
        rows, cols = merge_positions(int(a[1][0]), int(a[1][1]), n.attrs["merge"])
        q = _rmsnorm(self._proj(n, "q_proj", x).reshape(T, h, hd), self._p(n, "q_norm"), eps)
        k = _rmsnorm(self._proj(n, "k_proj", x).reshape(T, kv, hd), self._p(n, "k_norm"), eps)
        v = self._proj(n, "v_proj", x).reshape(T, kv, hd)
        q = rope_2d(q, rows, cols, n.attrs["rope_theta"]).reshape(T, kv, h // kv, hd)
        k = rope_2d(k, rows, cols, n.attrs["rope_theta"])
        p = _softmax(np.einsum("tkgd,ckd->kgtc", q, k) * F32(hd ** -0.5), axis=-1)
        o = np.einsum("kgtc,ckd->tkgd", p, v).reshape(T, h * hd)
        return self._proj(n, "out_proj", o.astype(F32))

    def _merge_tokens(self, n: Node, a: list[np.ndarray], s: SequenceState) -> np.ndarray:
        f2 = n.attrs["factor"] ** 2
        if a[0].shape[0] % f2:
            raise LfmcError(f"%{n.name}: {a[0].shape[0]} patches do not split into tokens of {f2}")
        return a[0].reshape(a[0].shape[0] // f2, f2 * a[0].shape[1])
