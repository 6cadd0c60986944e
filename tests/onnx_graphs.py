"""ONNX graphs of LFM2 as onnx-community publishes them, written with ``onnx.helper`` from lfmc weights.

The layout follows the decoder graphs that onnx-community's LFM2 files and onnxruntime-genai's LFM2 builder write
(read from their public code: transformers.js' cache handling, onnxruntime-genai ``builders/lfm2.py``):

- inputs ``input_ids`` [batch, sequence], ``attention_mask`` [batch, total], ``position_ids`` [batch, sequence],
  per conv layer ``past_conv.{i}`` [batch, hidden, L], per attention layer ``past_key_values.{i}.key`` / ``.value``
  [batch, kv_heads, past, head_dim] (``{i}`` the layer's index); outputs ``logits`` and ``present_conv.{i}``,
  ``present.{i}.key`` / ``.value``;
- ONNX Runtime's fused ops: ``SimplifiedLayerNormalization`` (the first norm and the q / k norms),
  ``SkipSimplifiedLayerNormalization`` (each residual add with the next norm), ``RotaryEmbedding`` (cos / sin
  caches, position ids), ``GroupQueryAttention`` (``seqlens_k`` / ``total_sequence_length`` from the mask);
- the short conv in its cache form: ``Conv(Concat(past_conv, B*x))`` without padding, the last S outputs kept,
  the new state the last L columns of the concatenation.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _q4_experts(w: np.ndarray, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """[E, N, K] float -> QMoE's uint8 [E, N, K / 2] (low nibble first, code + 8) and scales [E, N, K / block]."""
    E, N, K = w.shape
    wg = w.reshape(E, N, K // block, block)
    s = np.maximum(np.abs(wg).max(-1), 1e-8) / 7
    q = (np.clip(np.rint(wg / s[..., None]), -8, 7).astype(np.int32) + 8).reshape(E, N, K)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8), s.astype(np.float32)


def community_graph(cfg: dict[str, Any], w: dict[str, np.ndarray], *, cos_len: int = 256, qmoe: bool = False):
    """The ModelProto of an LFM2 or LFM2-MoE (``cfg`` a transformers config dict, ``w`` its lfmc weights; MoE
    layers as Liquid's ONNX builder writes them, which it says onnx-community's files are; ``qmoe``: the experts
    as 4-bit QMoE blocks)."""
    import onnx
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh

    D, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    lfm3 = cfg.get("architecture") == "Lfm3ForCausalLM"
    hd = int(cfg.get("head_dim") or D // H) if lfm3 else D // H
    L, eps, V = cfg["conv_L_cache"], float(cfg["norm_eps"]), w["model.embed_tokens.weight"].shape[0]
    theta = float(cfg.get("rope_theta", 1e6))
    nodes, inits = [], []
    ms = "com.microsoft"

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(nh.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op: str, ins: list[str], outs: list[str] | str, domain: str = "", **at) -> list[str]:
        outs = [outs] if isinstance(outs, str) else outs
        nodes.append(h.make_node(op, ins, outs, name=f"/{op}_{len(nodes)}", domain=domain, **at))
        return outs

    def linear(x: str, name: str, out: str) -> str:
        return node("MatMul", [x, init(name + ".T", w[name].T.astype(np.float32))], out)[0]

    def rope_caches(kind: str) -> tuple[str, str]:
        """cos / sin caches [positions, hd / 2] of a layer type (LFM3: its theta, rotated pairs and factor; the
        pairs not rotated have frequency 0)."""
        th, angles, fac = theta, hd // 2, 1.0
        if lfm3:
            from lfmc.frontend.config import rope_attrs

            r = rope_attrs(cfg, kind, hd)
            th, angles, fac = r["rope_theta"], r.get("rope_angles", hd // 2), r.get("rope_factor", 1.0)
        inv = np.zeros(hd // 2)
        inv[:angles] = 1.0 / th ** (np.arange(0, 2 * angles, 2, dtype=np.float64) / hd) / fac
        ang = np.arange(cos_len)[:, None] * inv[None, :]
        if f"cos_cache.{kind}" not in {t.name for t in inits}:
            init(f"cos_cache.{kind}", np.cos(ang).astype(np.float32))
            init(f"sin_cache.{kind}", np.sin(ang).astype(np.float32))
        return f"cos_cache.{kind}", f"sin_cache.{kind}"
    ins = [h.make_tensor_value_info("input_ids", TP.INT64, ["batch_size", "sequence_length"]),
           h.make_tensor_value_info("attention_mask", TP.INT64, ["batch_size", "total_sequence_length"]),
           h.make_tensor_value_info("position_ids", TP.INT64, ["batch_size", "sequence_length"])]
    outs = [h.make_tensor_value_info("logits", TP.FLOAT, ["batch_size", "sequence_length", V])]
    # GroupQueryAttention's lengths from the mask
    one = init("one_i64", np.array([1], np.int64))
    msum = node("ReduceSum", ["attention_mask", one], "/mask_sum", keepdims=0)[0]
    mlen = node("Sub", [msum, one], "/mask_sum_m1")[0]
    seqlens = node("Cast", [mlen], "seqlens_k", to=TP.INT32)[0]
    shp = node("Shape", ["attention_mask"], "/mask_shape")[0]
    tot = node("Gather", [shp, init("idx1", np.array(1, np.int64))], "/total_len", axis=0)[0]
    total = node("Cast", [tot], "total_seq_len", to=TP.INT32)[0]
    zero_i = init("zero_i64", np.array([0], np.int64))
    neg_l = init("neg_L", np.array([-L], np.int64))
    big = init("big_i64", np.array([1 << 62], np.int64))
    axis2 = init("axis2", np.array([2], np.int64))

    x = node("Gather", [init("model.embed_tokens.weight", w["model.embed_tokens.weight"]), "input_ids"],
             "/embed")[0]

    def moe_block(normed: str, f: str, i: int) -> str:
        """LFM2-MoE's routed experts as Liquid's ONNX builder writes them: sigmoid router scores, the expert bias for
        the choice only, top-k, the chosen (unbiased) weights' logarithms scattered over float32-min into
        ONNX Runtime's MoE (which softmaxes them: w / sum w), gate / up rows interleaved (swiglu_fusion 1)."""
        E, k = cfg["num_experts"], cfg["num_experts_per_tok"]
        flat = node("Reshape", [normed, init(f"/l{i}/moe/flat", np.array([-1, D], np.int64))], f"/l{i}/moe/x")[0]
        logits = linear(flat, f + "gate.weight", f"/l{i}/moe/logits")
        sc = node("Sigmoid", [logits], f"/l{i}/moe/scores")[0]
        choice = sc
        if cfg.get("use_expert_bias", True):
            choice = node("Add", [sc, init(f + "expert_bias", w[f + "expert_bias"])], f"/l{i}/moe/biased")[0]
        _, idx = node("TopK", [choice, init(f"/l{i}/moe/k", np.array([k], np.int64))],
                      [f"/l{i}/moe/topv", f"/l{i}/moe/topi"], axis=-1)
        wt = node("GatherElements", [sc, idx], f"/l{i}/moe/w", axis=1)[0]
        lw = node("Log", [wt], f"/l{i}/moe/logw")[0]
        shp = node("Shape", [logits], f"/l{i}/moe/shape")[0]
        floor = node("Expand", [init(f"/l{i}/moe/min", np.array(np.finfo(np.float32).min, np.float32)), shp],
                     f"/l{i}/moe/floor")[0]
        probs = node("ScatterElements", [floor, idx, lw], f"/l{i}/moe/probs", axis=1)[0]
        gu = w[f + "experts.gate_up_proj"]                     # [E, 2F, D]: gate rows then up rows
        F = gu.shape[1] // 2
        inter = np.empty_like(gu)
        inter[:, 0::2], inter[:, 1::2] = gu[:, :F], gu[:, F:]
        if qmoe:                                       # 4-bit experts in blocks of 32 (Liquid's q4 export)
            (q1, s1), (q2, s2) = _q4_experts(inter), _q4_experts(w[f + "experts.down_proj"])
            y = node("QMoE", [flat, probs, init(f + "fc1_q", q1), init(f + "fc1_s", s1), "", init(f + "fc2_q", q2),
                              init(f + "fc2_s", s2)], f"/l{i}/moe/y", domain=ms, k=k, activation_type="swiglu",
                     expert_weight_bits=4, block_size=32, normalize_routing_weights=1, swiglu_fusion=1,
                     activation_alpha=1.0, activation_beta=0.0)[0]
        else:
            y = node("MoE", [flat, probs, init(f + "fc1", inter), "", init(f + "fc2", w[f + "experts.down_proj"])],
                     f"/l{i}/moe/y", domain=ms, k=k, activation_type="swiglu", normalize_routing_weights=1,
                     swiglu_fusion=1, activation_alpha=1.0, activation_beta=0.0)[0]
        scale = float(cfg.get("routed_scaling_factor", 1.0))
        if scale != 1.0:
            y = node("Mul", [y, init(f"/l{i}/moe/scale", np.array(scale, np.float32))], f"/l{i}/moe/scaled")[0]
        shp_in = node("Shape", [normed], f"/l{i}/moe/in_shape")[0]
        return node("Reshape", [y, shp_in], f"/l{i}/moe/out")[0]
    res = None
    normed = None

    def norm_in(x_in: str, weight: str, tag: str) -> tuple[str, str]:
        """(normed, residual): the first norm plain, the others fused with the residual add."""
        nonlocal res
        if res is None:
            y = node("SimplifiedLayerNormalization", [x_in, init(weight, w[weight])], f"/{tag}/norm", axis=-1,
                     epsilon=eps, stash_type=1)[0]
            return y, x_in
        outs_ = node("SkipSimplifiedLayerNormalization", [x_in, res, init(weight, w[weight])],
                     [f"/{tag}/norm", "", "", f"/{tag}/sum"], domain=ms, epsilon=eps)
        return outs_[0], outs_[3]

    from lfmc.frontend.config import layer_types

    for i, kind in enumerate(layer_types(cfg)):
        p = f"model.layers.{i}."
        normed, res = norm_in(x if res is None else x, p + "operator_norm.weight", f"l{i}/op")
        if kind == "conv":
            c = p + "conv."
            past = f"past_conv.{i}"
            ins.append(h.make_tensor_value_info(past, TP.FLOAT, ["batch_size", D, L]))
            outs.append(h.make_tensor_value_info(f"present_conv.{i}", TP.FLOAT, ["batch_size", D, L]))
            bcx = linear(normed, c + "in_proj.weight", f"/l{i}/in_proj")
            bcx_t = node("Transpose", [bcx], f"/l{i}/in_proj_t", perm=[0, 2, 1])[0]
            b_, c_, x_ = node("Split", [bcx_t, init(f"/l{i}/split", np.array([D, D, D], np.int64))],
                              [f"/l{i}/B", f"/l{i}/C", f"/l{i}/x"], axis=1)
            bx = node("Mul", [b_, x_], f"/l{i}/Bx")[0]
            cat = node("Concat", [past, bx], f"/l{i}/cat", axis=2)[0]
            node("Slice", [cat, neg_l, big, axis2], f"present_conv.{i}")
            y = node("Conv", [cat, init(c + "conv.weight", w[c + "conv.weight"])], f"/l{i}/conv", group=D,
                     kernel_shape=[L], pads=[0, 0])[0]
            slen = node("Shape", [bx], f"/l{i}/bx_shape", start=2, end=3)[0]
            negs = node("Neg", [slen], f"/l{i}/neg_s")[0]
            y = node("Slice", [y, negs, big, axis2], f"/l{i}/conv_last")[0]
            y = node("Mul", [c_, y], f"/l{i}/Cy")[0]
            y = node("Transpose", [y], f"/l{i}/Cy_t", perm=[0, 2, 1])[0]
            y = linear(y, c + "out_proj.weight", f"/l{i}/out_proj")
        else:
            a = p + "self_attn."
            cos, sin = rope_caches(kind)
            out_n, qn, kn = ("o_proj", "q_norm", "k_norm") if lfm3 else ("out_proj", "q_layernorm", "k_layernorm")
            # ONNX Runtime's local_window_size counts the keys a query sees, itself included (checked against the
            # interpreter: prefill and decode past the window agree to 3e-6)
            lws = int(cfg["sliding_window"]) if kind == "sliding_attention" else -1
            for kv in ("key", "value"):
                ins.append(h.make_tensor_value_info(f"past_key_values.{i}.{kv}", TP.FLOAT,
                                                    ["batch_size", KV, "past_sequence_length", hd]))
                outs.append(h.make_tensor_value_info(f"present.{i}.{kv}", TP.FLOAT,
                                                     ["batch_size", KV, "total_sequence_length", hd]))
            q = linear(normed, a + "q_proj.weight", f"/l{i}/q")
            k = linear(normed, a + "k_proj.weight", f"/l{i}/k")
            v = linear(normed, a + "v_proj.weight", f"/l{i}/v")
            qk = []
            for t, heads, nw in ((q, H, qn), (k, KV, kn)):
                r = node("Reshape", [t, init(f"/l{i}/{nw}/shape", np.array([0, 0, heads, hd], np.int64))],
                         f"/l{i}/{nw}/r")[0]
                r = node("SimplifiedLayerNormalization", [r, init(a + nw + ".weight", w[a + nw + ".weight"])],
                         f"/l{i}/{nw}/n", axis=-1, epsilon=eps, stash_type=1)[0]
                r = node("Reshape", [r, init(f"/l{i}/{nw}/back", np.array([0, 0, heads * hd], np.int64))],
                         f"/l{i}/{nw}/b")[0]
                r = node("RotaryEmbedding", [r, "position_ids", cos, sin], f"/l{i}/{nw}/rot", domain=ms,
                         interleaved=0, num_heads=heads)[0]
                qk.append(r)
            o = node("GroupQueryAttention", [qk[0], qk[1], v, f"past_key_values.{i}.key",
                                             f"past_key_values.{i}.value", seqlens, total],
                     [f"/l{i}/attn", f"present.{i}.key", f"present.{i}.value"], domain=ms, num_heads=H,
                     kv_num_heads=KV, scale=float(hd ** -0.5), do_rotary=0, local_window_size=lws)[0]
            if a + "g_proj.weight" in w:                # LFM3's per-head output gate
                gt = node("Sigmoid", [linear(normed, a + "g_proj.weight", f"/l{i}/g")], f"/l{i}/g_sig")[0]
                gt = node("Unsqueeze", [gt, init(f"/l{i}/g_ax", np.array([-1], np.int64))], f"/l{i}/g_u")[0]
                o4 = node("Reshape", [o, init(f"/l{i}/o4", np.array([0, 0, H, hd], np.int64))], f"/l{i}/o_r")[0]
                o4 = node("Mul", [o4, gt], f"/l{i}/o_gated")[0]
                o = node("Reshape", [o4, init(f"/l{i}/o3", np.array([0, 0, H * hd], np.int64))], f"/l{i}/o_b")[0]
            y = linear(o, a + out_n + ".weight", f"/l{i}/o")
        if p + "post_operator_norm.weight" in w:        # LFM3's sandwich norms
            y = node("SimplifiedLayerNormalization", [y, init(p + "post_operator_norm.weight",
                                                              w[p + "post_operator_norm.weight"])],
                     f"/l{i}/post_op", axis=-1, epsilon=eps, stash_type=1)[0]
        normed, res = norm_in(y, p + "ffn_norm.weight", f"l{i}/ffn")
        f = p + "feed_forward."
        if f + "gate.weight" in w:
            y = moe_block(normed, f, i)
        else:
            g1 = linear(normed, f + "w1.weight", f"/l{i}/w1")
            s = node("Sigmoid", [g1], f"/l{i}/sig")[0]
            g1 = node("Mul", [g1, s], f"/l{i}/silu")[0]
            u = linear(normed, f + "w3.weight", f"/l{i}/w3")
            y = linear(node("Mul", [g1, u], f"/l{i}/gu")[0], f + "w2.weight", f"/l{i}/w2")
        if p + "post_ffn_norm.weight" in w:
            y = node("SimplifiedLayerNormalization", [y, init(p + "post_ffn_norm.weight", w[p + "post_ffn_norm.weight"])],
                     f"/l{i}/post_ffn", axis=-1, epsilon=eps, stash_type=1)[0]
        x = y
    final = node("SkipSimplifiedLayerNormalization", [x, res, init("model.embedding_norm.weight",
                                                                    w["model.embedding_norm.weight"])],
                 ["/final_norm"], domain=ms, epsilon=eps)[0]
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    linear_w = init("lm_head.weight.T", head.T.astype(np.float32))
    node("MatMul", [final, linear_w], "logits")
    g = h.make_graph(nodes, "lfm2_decoder", ins, outs, inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid(ms, 1)], ir_version=8)


def ort_session(mo):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    return ort.InferenceSession(mo.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_generate(sess, prompt: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy decode through a cache graph: prefill ``prompt``, then ``steps`` one-token steps feeding the
    ``present*`` outputs back as ``past*``. Returns the tokens and the logits of every step (prefill: last row)."""
    feeds: dict[str, np.ndarray] = {}
    for i in sess.get_inputs():
        if i.name.startswith("past"):
            shape = [1 if d in ("batch_size",) else (0 if isinstance(d, str) else d) for d in i.shape]
            feeds[i.name] = np.zeros(shape, np.float32)
    ids = list(prompt)
    toks, logits = [], []
    cur, pos = list(prompt), 0
    names = [o.name for o in sess.get_outputs()]
    for _ in range(steps + 1):
        n = len(cur)
        feeds |= {"input_ids": np.array([cur], np.int64),
                  "attention_mask": np.ones((1, pos + n), np.int64),
                  "position_ids": np.arange(pos, pos + n, dtype=np.int64)[None]}
        out = dict(zip(names, sess.run(None, {k: v for k, v in feeds.items()
                                                if k in {i.name for i in sess.get_inputs()}})))
        lg = out["logits"][0, -1]
        logits.append(lg)
        t = int(np.argmax(lg))
        toks.append(t)
        for k, v in out.items():
            if k.startswith("present_conv"):
                feeds[k.replace("present_conv", "past_conv")] = v
            elif k.startswith("present."):
                feeds[k.replace("present.", "past_key_values.")] = v
        pos += n
        cur = [t]
        ids.append(t)
    return toks, logits
