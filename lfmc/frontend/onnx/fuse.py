"""Fusing the many ONNX spellings of an RMSNorm, a projection and an embedding into one op each.

Each function here finds one spelling in a :class:`Net` and replaces its nodes by a fused :class:`Op`:
``RMSNorm`` (attrs ``eps``, input 1 the weight's value), ``Linear`` and ``Embedding`` (with a :class:`Weight`).
Only active ops are rewritten; a chain whose intermediate values have other users is left alone (the lifter then
names it).
"""
from __future__ import annotations

import numpy as np

from .net import MS, Net, Op, OnnxLiftError, Weight


def _f32(v) -> float:
    """A float32 constant as the shortest decimal that round-trips (9.99999997e-07 -> 1e-06)."""
    return float(str(np.float32(np.asarray(v).reshape(-1)[0])))


def _sole_user(net: Net, v: str, op: str | tuple[str, ...]) -> Op | None:
    us = net.active_users(v)
    ops = (op,) if isinstance(op, str) else op
    return us[0] if len(us) == 1 and us[0].op_type in ops else None


def _through_casts(net: Net, v: str) -> str:
    v = net.canon(v)
    while v in net.producer and net.producer[v].op_type == "Cast":
        v = net.canon(net.producer[v].input[0])
    return v


def _const_operand(net: Net, n: Op) -> tuple[np.ndarray | None, str | None]:
    """(constant, other operand) of a binary node with one constant operand."""
    a, b = n.input[0], n.input[1]
    ca, cb = net.const(a) if net.is_const(a) else None, net.const(b) if net.is_const(b) else None
    if (ca is None) == (cb is None):
        return None, None
    return (ca, b) if ca is not None else (cb, a)


# ------------------------------------------------------------------------------------------------ RMSNorm
def fuse_rmsnorms(net: Net) -> None:
    """``x * rsqrt(mean(x^2) + eps) * w`` in its exploded forms, and the fused ONNX / ONNX Runtime ops."""
    for n in list(net.ops):
        if n.op_type in ("SimplifiedLayerNormalization", "RMSNormalization") and n.input[0] in net.active:
            if n.attrs.get("axis", -1) != -1:
                raise OnnxLiftError("the graph", f"{n.op_type} over axis {n.attrs.get('axis')} is not a row norm",
                                    n.src)
            net.replace([n], [Op("RMSNorm", [n.input[0], n.input[1]], [n.output[0]],
                                 {"eps": _f32(n.attrs.get("epsilon", 1e-5))}, n.src)])
        elif n.op_type == "SkipSimplifiedLayerNormalization" and n.domain == MS:
            a, skip, w = n.input[0], n.input[1], n.input[2]
            bias = n.input[3] if len(n.input) > 3 and n.input[3] else None
            s = n.output[3] if len(n.output) > 3 and n.output[3] else n.output[0] + "/skip_sum"
            new = []
            if bias is not None:
                new.append(Op("Add", [a, bias], [s + "/biased"], {}, n.src))
                a = s + "/biased"
            new += [Op("Add", [a, skip], [s], {}, n.src),
                    Op("RMSNorm", [s, w], [n.output[0]], {"eps": _f32(n.attrs.get("epsilon", 1e-5))}, n.src)]
            net.replace([n], new)
    for r in [o for o in net.ops if o.op_type == "ReduceMean" and o.output[0] in net.active]:
        if r not in net.ops:
            continue
        _fuse_exploded(net, r)


def _fuse_exploded(net: Net, r: Op) -> None:
    axes = r.attrs.get("axes") or (list(net.const(r.input[1])) if len(r.input) > 1 and r.input[1] else None)
    if axes is None or [int(a) for a in axes] != [-1] or not r.attrs.get("keepdims", 1):
        return
    sq = net.prod(r.input[0])
    if sq is None or sq.op_type not in ("Pow", "Mul"):
        return
    if sq.op_type == "Pow":
        e = net.const(sq.input[1]) if net.is_const(sq.input[1]) else None
        if e is None or e.size != 1 or float(e.reshape(-1)[0]) != 2.0:
            return
        x = _through_casts(net, sq.input[0])
    else:
        if net.canon(sq.input[0]) != net.canon(sq.input[1]):
            return
        x = _through_casts(net, sq.input[0])
    chain = [sq, r]
    add = _sole_user(net, r.output[0], "Add")
    if add is None:
        return
    eps, _ = _const_operand(net, add)
    if eps is None or eps.size != 1:
        return
    chain.append(add)
    v = add.output[0]
    s = _sole_user(net, v, ("Sqrt", "Rsqrt"))
    if s is None:
        return
    chain.append(s)
    v = s.output[0]
    divide = False
    if s.op_type == "Sqrt":
        u = _sole_user(net, v, ("Reciprocal", "Div"))
        if u is None:
            return
        if u.op_type == "Div":
            if net.canon(u.input[1]) != net.canon(v):
                return
            num = u.input[0]
            if net.is_const(num):                  # 1 / sqrt(..)
                c = net.const(num)
                if c.size != 1 or float(c.reshape(-1)[0]) != 1.0:
                    return
            elif _through_casts(net, num) == x:    # x / sqrt(..)
                divide = True
            else:
                return
        chain.append(u)
        v = u.output[0]
    if divide:
        normed = chain[-1]
    else:
        m = _sole_user(net, v, "Mul")
        if m is None:
            return
        other = m.input[1] if net.canon(m.input[0]) == net.canon(v) else m.input[0]
        if _through_casts(net, other) != x:
            return
        chain.append(m)
        normed = m
    v = normed.output[0]
    while (c := _sole_user(net, v, "Cast")) is not None:
        chain.append(c)
        v = c.output[0]
    wm = _sole_user(net, v, "Mul")
    w = None
    if wm is not None:
        w, other = _const_operand(net, wm)
        if w is not None and net.canon(other) == net.canon(v) and w.size > 1 and w.ndim >= 1 \
                and all(d == 1 for d in w.shape[:-1]):
            chain.append(wm)
            v = wm.output[0]
        else:
            w = None
    if w is None:
        return
    wname = next(i for i in wm.input if net.is_const(i))
    net.replace(chain, [Op("RMSNorm", [x, wname], [v], {"eps": _f32(eps)}, [o for c in chain for o in c.src])])


# ------------------------------------------------------------------------------------------------ Linear
def fuse_linears(net: Net) -> None:
    """Projections with a constant weight: MatMul / Gemm (+ a bias Add), MatMulNBits, and dynamic-int8
    ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul`` chains."""
    for n in list(net.ops):
        if n not in net.ops or not n.input or net.canon(n.input[0]) not in net.active:
            continue
        if n.op_type in ("MatMul", "Gemm") and net.is_const(n.input[1]):
            _fuse_matmul(net, n)
        elif n.op_type == "MatMulNBits" and n.domain == MS:
            _fuse_nbits(net, n)
        elif n.op_type == "DynamicQuantizeLinear":
            _fuse_dynamic_int8(net, n)


def _absorb_bias(net: Net, chain: list[Op], N: int) -> tuple[np.ndarray | None, str]:
    """(bias, output) of the projection ending ``chain``: a following Add of a constant [N] joins the chain."""
    out = chain[-1].output[0]
    a = _sole_user(net, out, "Add")
    if a is None:
        return None, out
    b, other = _const_operand(net, a)
    if b is None or net.canon(other) != net.canon(out) or b.size != N:
        return None, out
    chain.append(a)
    return np.asarray(b, np.float32).reshape(-1), a.output[0]


def _fuse_matmul(net: Net, n: Op) -> None:
    wname = n.input[1]
    shape = np.shape(net.const(wname))
    if len(shape) != 2:
        return
    bias = None
    chain = [n]
    if n.op_type == "Gemm":
        at = n.attrs
        if at.get("transA", 0) or at.get("alpha", 1.0) != 1.0 or at.get("beta", 1.0) != 1.0:
            raise OnnxLiftError("the graph", "a Gemm with transA / alpha / beta is not a linear layer", n.src)
        trans = bool(at.get("transB", 0))
        if len(n.input) > 2 and n.input[2]:
            bias = np.asarray(net.const(n.input[2]), np.float32).reshape(-1)
    else:
        trans = False
    N, K = (shape[0], shape[1]) if trans else (shape[1], shape[0])
    out = n.output[0]
    if bias is None:
        bias, out = _absorb_bias(net, chain, N)
    src = net.const(wname)
    dt = {np.dtype(np.float16): "f16"}.get(np.asarray(src).dtype, "f32")

    def dense(wname=wname, trans=trans) -> np.ndarray:
        w = np.asarray(net.const(wname), np.float32)
        return np.ascontiguousarray(w if trans else w.T)

    net.replace(chain, [Op("Linear", [n.input[0]], [out], {}, [o for c in chain for o in c.src],
                           weight=Weight(dense, N, K, bias, dtype=dt))])


def _fuse_nbits(net: Net, n: Op) -> None:
    at = n.attrs
    K, N, bits, bs = int(at["K"]), int(at["N"]), int(at.get("bits", 4)), int(at["block_size"])
    if at.get("weight_prepacked", 0):
        raise OnnxLiftError("the graph", "MatMulNBits with a prepacked (GPU layout) weight is not supported", n.src)
    if bits not in (4, 8):
        raise OnnxLiftError("the graph", f"MatMulNBits with {bits}-bit weights is not supported (4 or 8)", n.src)
    if len(n.input) > 4 and n.input[4]:
        raise OnnxLiftError("the graph", "MatMulNBits with g_idx (act-order) is not supported", n.src)
    B = net.const(n.input[1])
    sc = net.const(n.input[2])
    zp = net.const(n.input[3]) if len(n.input) > 3 and n.input[3] else None
    bias = net.const(n.input[5]) if len(n.input) > 5 and n.input[5] else None
    if B is None or sc is None:
        raise OnnxLiftError("the graph", "MatMulNBits weights or scales are not constants", n.src)
    nb = (K + bs - 1) // bs
    blob = bs * bits // 8
    if B.dtype != np.uint8 or B.size != N * nb * blob or sc.size != N * nb:
        raise OnnxLiftError("the graph", f"MatMulNBits tensors do not fit K={K}, N={N}, block_size={bs}, bits={bits} "
                            f"(weight {list(B.shape)}, scales {list(sc.shape)})", n.src)
    B = np.asarray(B).reshape(N, nb, blob)
    scales = np.asarray(sc, np.float32).reshape(N, nb)
    if bits == 4:
        codes = np.stack([B & 15, B >> 4], -1).reshape(N, nb * bs)
    else:
        codes = B.reshape(N, nb * bs)
    if zp is None:
        zeros = np.full((N, nb), 1 << (bits - 1), np.float32)
    elif zp.dtype == np.uint8 and zp.size != N * nb:      # packed like the weight
        z = np.asarray(zp).reshape(N, -1)
        zeros = (np.stack([z & 15, z >> 4], -1).reshape(N, -1)[:, :nb] if bits == 4 else z[:, :nb]).astype(np.float32)
    else:
        zeros = np.asarray(zp, np.float32).reshape(N, nb)
    chain = [n]
    out = n.output[0]
    if bias is None:
        bias, out = _absorb_bias(net, chain, N)
    else:
        bias = np.asarray(bias, np.float32).reshape(-1)

    def dense() -> np.ndarray:
        w = (codes.astype(np.float32).reshape(N, nb, bs) - zeros[..., None]) * scales[..., None]
        return np.ascontiguousarray(w.reshape(N, nb * bs)[:, :K])

    kept, note = None, None
    half = (1 << (bits - 1))
    sym = zp is None or bool(np.all(zeros == half))
    if K % bs == 0 and (bits == 4 or sym):
        c = codes[:, :K]
        c = c.astype(np.uint8) if bits == 4 else (c.astype(np.int16) - half).astype(np.int8)
        kept = ("u4" if bits == 4 else "i8", np.ascontiguousarray(c), scales, None if sym else zeros)
    else:
        why = (f"K {K} is not a multiple of the block {bs}" if K % bs else "8-bit codes with zero points")
        note = f"MatMulNBits {bits}-bit block {bs} dequantized to float32 ({why})"
    net.replace(chain, [Op("Linear", [n.input[0]], [out], {"accuracy_level": int(at.get("accuracy_level", 0))},
                           [o for c in chain for o in c.src], weight=Weight(dense, N, K, bias, kept, note, "q4"
                                                                            if bits == 4 else "q8"))])


def _fuse_dynamic_int8(net: Net, dq: Op) -> None:
    """``DynamicQuantizeLinear(x) -> MatMulInteger(xq, Wq, xz, Wz) -> Cast -> Mul(x_scale * W_scale)``: one Linear
    per MatMulInteger (a quantized x may feed several), weight dequantized (per tensor or per column)."""
    xq, xs = dq.output[0], dq.output[1]
    for mm in [u for u in net.users.get(xq, []) if u.op_type == "MatMulInteger"]:
        if mm not in net.ops or not net.is_const(mm.input[1]):
            continue
        wq = np.asarray(net.const(mm.input[1]))
        wz = net.const(mm.input[3]) if len(mm.input) > 3 and mm.input[3] else np.zeros((), wq.dtype)
        cast = _sole_user(net, mm.output[0], "Cast")
        if wq.ndim != 2 or cast is None:
            continue
        mul = _sole_user(net, cast.output[0], "Mul")
        if mul is None:
            continue
        scale_v = mul.input[1] if net.canon(mul.input[0]) == net.canon(cast.output[0]) else mul.input[0]
        sm = net.prod(scale_v)
        ws = None
        if sm is not None and sm.op_type == "Mul" and xs in (sm.input[0], sm.input[1]):
            other = sm.input[1] if sm.input[0] == xs else sm.input[0]
            ws = net.const(other) if net.is_const(other) else None
        if ws is None:
            continue
        K, N = wq.shape
        chain = [mm, cast, sm, mul]
        bias, out = _absorb_bias(net, chain, N)

        def dense(wq=wq, wz=wz, ws=ws) -> np.ndarray:
            w = (wq.astype(np.float32) - np.asarray(wz, np.float32)) * np.asarray(ws, np.float32)
            return np.ascontiguousarray(w.T)

        per = "per tensor" if np.size(ws) == 1 else "per column"
        zero = " with zero points" if np.any(np.asarray(wz) != 0) else ""
        net.replace(chain, [Op("Linear", [dq.input[0]], [out], {}, [o for c in chain for o in c.src],
                               weight=Weight(dense, N, K, bias, None,
                                             f"dynamic int8 ({per}{zero}) dequantized to float32", "q8"))])
    for ci in [u for u in net.users.get(xq, []) if u.op_type == "ConvInteger"]:
        _fuse_conv_integer(net, dq, ci)
    if not net.users.get(xq):
        net.replace([dq], [])


def _fuse_conv_integer(net: Net, dq: Op, ci: Op) -> None:
    """``DynamicQuantizeLinear(x) -> ConvInteger(xq, Wq, xz, Wz) -> Cast -> Mul(x_scale * W_scale)`` (the short conv
    of a quantize_dynamic file): a float Conv of x with the dequantized kernel (noted)."""
    if ci not in net.ops or not net.is_const(ci.input[1]):
        return
    xs = dq.output[1]
    wq = np.asarray(net.const(ci.input[1]))
    wz = net.const(ci.input[3]) if len(ci.input) > 3 and ci.input[3] else np.zeros((), wq.dtype)
    cast = _sole_user(net, ci.output[0], "Cast")
    mul = _sole_user(net, cast.output[0], "Mul") if cast is not None else None
    if mul is None:
        return
    sm = net.prod(mul.input[1] if net.canon(mul.input[0]) == net.canon(cast.output[0]) else mul.input[0])
    if sm is None or sm.op_type != "Mul" or xs not in sm.input:
        return
    other = sm.input[1] if sm.input[0] == xs else sm.input[0]
    ws = net.const(other) if net.is_const(other) else None
    if ws is None:
        return
    kname = ci.input[1] + "/dequantized"
    net.add_const(kname, ((wq.astype(np.float32) - np.asarray(wz, np.float32)) * np.asarray(ws, np.float32)))
    net.notes.append(f"{ci.input[1]}: dynamic int8 conv kernel dequantized to float32")
    at = {k: v for k, v in ci.attrs.items() if k in ("group", "kernel_shape", "pads", "strides", "dilations")}
    net.replace([ci, cast, sm, mul], [Op("Conv", [dq.input[0], kname], [mul.output[0]], at,
                                         [o for c in (ci, cast, sm, mul) for o in c.src])])


# ------------------------------------------------------------------------------------------------ Embedding
def fuse_embeddings(net: Net) -> None:
    """The token embedding: Gather of a constant table (float, or dequantized by a following DequantizeLinear),
    or ONNX Runtime's GatherBlockQuantized."""
    for n in list(net.ops):
        if n not in net.ops or len(n.input) < 2 or net.canon(n.input[1]) != net.tokens:
            continue
        if n.op_type == "Gather" and net.is_const(n.input[0]) and n.attrs.get("axis", 0) == 0:
            t = net.const(n.input[0])
            chain, out = [n], n.output[0]
            dql = _sole_user(net, out, "DequantizeLinear")
            if np.issubdtype(t.dtype, np.integer) and dql is not None:
                s = net.const(dql.input[1])
                z = net.const(dql.input[2]) if len(dql.input) > 2 and dql.input[2] else np.zeros((), t.dtype)

                def dense(t=t, s=s, z=z) -> np.ndarray:
                    return (t.astype(np.float32) - np.asarray(z, np.float32)) * np.asarray(s, np.float32)

                chain.append(dql)
                out = dql.output[0]
                w = Weight(dense, t.shape[0], t.shape[1], note="int8 embedding dequantized to float32")
            else:
                w = Weight(lambda t=t: np.asarray(t, np.float32), t.shape[0], t.shape[1],
                           dtype="f16" if t.dtype == np.float16 else "f32")
            w.name = n.input[0]
            net.replace(chain, [Op("Embedding", [n.input[1]], [out], {}, [o for c in chain for o in c.src], weight=w)])
        elif n.op_type == "GatherBlockQuantized" and n.domain == MS:
            net.replace([n], [Op("Embedding", [n.input[1]], [n.output[0]], {}, n.src, weight=_gbq(net, n))])


def _gbq(net: Net, n: Op) -> Weight:
    at = n.attrs
    data, scales = np.asarray(net.const(n.input[0])), np.asarray(net.const(n.input[2]), np.float32)
    zp = net.const(n.input[3]) if len(n.input) > 3 and n.input[3] else None
    bits, bs = int(at.get("bits", 4)), int(at.get("block_size", 128))
    if at.get("gather_axis", 0) != 0 or at.get("quantize_axis", 1) not in (1, -1) or data.ndim != 2:
        raise OnnxLiftError("the graph", "GatherBlockQuantized: only a [vocab, hidden] table gathered on axis 0 and "
                            "quantized along the hidden axis is an embedding", n.src)
    if data.dtype == np.uint8 and bits == 4:            # packed, low nibble first
        codes = np.stack([data & 15, data >> 4], -1).reshape(data.shape[0], -1)
        default = 8
    else:
        codes, default = data, (0 if data.dtype in (np.int8,) or bits == 4 else 1 << (bits - 1))
    V, H = codes.shape
    nb = scales.shape[-1]
    if zp is None:
        z = np.full((V, nb), default, np.float32)
    else:
        z = np.asarray(zp)
        if z.dtype == np.uint8 and bits == 4 and z.size * 2 == V * nb:
            z = np.stack([z & 15, z >> 4], -1)
        z = z.reshape(V, nb).astype(np.float32)

    def dense() -> np.ndarray:
        w = (codes.astype(np.float32).reshape(V, nb, bs) - z[..., None]) * scales.reshape(V, nb)[..., None]
        return w.reshape(V, nb * bs)[:, :H]

    w = Weight(dense, V, H, note=f"GatherBlockQuantized {bits}-bit block {bs} embedding dequantized to float32")
    w.name = n.input[0]
    return w


def fuse_all(net: Net) -> None:
    fuse_embeddings(net)
    fuse_linears(net)
    fuse_rmsnorms(net)
