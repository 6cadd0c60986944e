"""Each shared kernel, compiled for the host, against a numpy reference on several shapes."""
from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from lfmc.targets import kernels as K  # noqa: E402
from lfmc.targets.host import host_target  # noqa: E402

RNG = np.random.default_rng(0)
KN = K.Knobs(lanes=8, rows=4, cols=3)


def build(f):
    mod = tvm.IRModule({f.attrs["global_symbol"]: f})
    return tvm.compile(mod, target=host_target())[f.attrs["global_symbol"]]


def r(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def pack(w, l):
    N, Kd = w.shape
    return np.ascontiguousarray(w.reshape(N // l, l, Kd).transpose(0, 2, 1))


def call(f, *arrays):
    ts = [tvm.runtime.tensor(a) if isinstance(a, np.ndarray) else a for a in arrays]
    f(*ts)
    return [t.numpy() if hasattr(t, "numpy") else t for t in ts]


@pytest.mark.parametrize("N,Kd,rows,bias", [(48, 32, 4, False), (96, 40, 8, True), (24, 16, 1, False)])
@pytest.mark.parametrize("knobs", [K.Knobs(8, 4, 3), K.Knobs(8, 1, 8)])
def test_matmul(N, Kd, rows, bias, knobs):
    f = build(K.make_matmul("mm", N, Kd, knobs, bias))
    rows = -(-rows // knobs.rows) * knobs.rows
    x, w, b = r(rows, Kd), r(N, Kd), r(N)
    l = K.pick_lanes(N, knobs.lanes)
    args = [x, pack(w, l)] + ([b] if bias else []) + [np.zeros((rows, N), np.float32), rows // knobs.rows]
    y = call(f, *args)[-2]
    np.testing.assert_allclose(y, x @ w.T + (b if bias else 0), rtol=1e-5, atol=1e-5)


def test_rmsnorm_add_silu_take_last():
    x, w = r(5, 32), r(32)
    y = call(build(K.make_rmsnorm("n", 32, 1e-5)), x, w, np.zeros_like(x))[2]
    np.testing.assert_allclose(y, w * x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5), rtol=1e-5, atol=1e-6)
    a, b = r(3, 16), r(3, 16)
    np.testing.assert_allclose(call(build(K.make_add("a", 16)), a.copy(), b)[0], a + b, rtol=1e-6)
    g = r(4, 2 * 8)
    for gate in (0, 1):
        out = call(build(K.make_silu_mul(f"s{gate}", 8, gate)), g, np.zeros((4, 8), np.float32))[1]
        gv, up = (g[:, :8], g[:, 8:]) if gate == 0 else (g[:, 8:], g[:, :8])
        np.testing.assert_allclose(out, gv / (1 + np.exp(-gv)) * up, rtol=1e-5, atol=1e-6)
    last = call(build(K.make_take_last("t", 16)), a, np.zeros((4, 16), np.float32))[1]
    np.testing.assert_array_equal(last[0], a[-1])


def test_embedding():
    V, D, l = 64, 16, 8
    table = r(V, D)
    tok = np.array([0, 63, 9, 9], np.int32)
    out = call(build(K.make_embedding("e", V, D, l)), tok, pack(table, l), np.zeros((4, D), np.float32))[2]
    np.testing.assert_array_equal(out, table[tok])


def _conv_ref(P, state, w, cb, D, L, ib, ic, ix):
    bx = P[:, ib * D:(ib + 1) * D] * P[:, ix * D:(ix + 1) * D]
    hist = np.concatenate([state.T, bx], 0)
    T_ = len(P)
    y = np.stack([(hist[t:t + L] * w.T).sum(0) for t in range(T_)]) + cb
    return P[:, ic * D:(ic + 1) * D] * y, hist[len(hist) - (L - 1):].T


@pytest.mark.parametrize("L,T_", [(3, 5), (3, 1), (4, 2), (2, 6)])
def test_conv_prefill_and_decode(L, T_):
    D, S = 16, 3
    ib, ic, ix = 2, 0, 1
    P, st, w, cb = r(T_, 3 * D), r(S, D, L - 1), r(D, L), r(D)
    out = call(build(K.make_conv_prefill("cp", D, L, ib, ic, ix)), P, st.copy(), w, cb,
               np.zeros((T_, D), np.float32), 2)
    y_ref, s_ref = _conv_ref(P, st[2], w, cb, D, L, ib, ic, ix)
    np.testing.assert_allclose(out[4], y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1][2], s_ref, rtol=1e-6)
    np.testing.assert_array_equal(out[1][[0, 1]], st[[0, 1]])
    # decode: one token for each of two sequences
    slots = np.array([2, 0], np.int32)
    Pd = r(2, 3 * D)
    outd = call(build(K.make_conv_decode("cd", D, L, ib, ic, ix)), Pd, st.copy(), w, cb,
                np.zeros((2, D), np.float32), slots)
    for b, s in enumerate(slots):
        y_ref, s_ref = _conv_ref(Pd[b:b + 1], st[s], w, cb, D, L, ib, ic, ix)
        np.testing.assert_allclose(outd[4][b], y_ref[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(outd[1][s], s_ref, rtol=1e-6)


def _rope_ref(x, pos, theta):
    hd = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = pos[:, None] * inv[None]
    ang = np.concatenate([ang, ang], -1)[:, None]
    rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
    return x * np.cos(ang) + rot * np.sin(ang)


def test_qk_rope_and_attention():
    H, KV, hd, S, C = 4, 2, 8, 3, 16
    eps, theta = 1e-5, 1e4
    n = 5
    X, qn, kn = r(n, (H + 2 * KV) * hd), r(hd), r(hd)
    Kc, Vc = r(S, C, KV, hd), r(S, C, KV, hd)
    slots = np.full(n, 1, np.int32)
    pos = np.arange(3, 3 + n, dtype=np.int32)           # a chunk continuing a sequence at position 3
    out = call(build(K.make_qk_rope("qk", H, KV, hd, eps, theta)), X, qn, kn, Kc.copy(), Vc.copy(),
               np.zeros((n, H * hd), np.float32), slots, pos)
    norm = lambda v, w: w * v / np.sqrt((v * v).mean(-1, keepdims=True) + eps)  # noqa: E731
    q = _rope_ref(norm(X[:, :H * hd].reshape(n, H, hd), qn), pos.astype(np.float64), theta)
    k = _rope_ref(norm(X[:, H * hd:(H + KV) * hd].reshape(n, KV, hd), kn), pos.astype(np.float64), theta)
    np.testing.assert_allclose(out[5].reshape(n, H, hd), q, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out[3][1, 3:3 + n], k, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out[4][1, 3:3 + n], X[:, (H + KV) * hd:].reshape(n, KV, hd))
    np.testing.assert_array_equal(out[3][0], Kc[0])
    Kc2, Vc2, Q = out[3], out[4], out[5]
    o = call(build(K.make_attention("at", H, KV, hd)), Q, Kc2, Vc2, np.zeros((n, H * hd), np.float32),
             slots, pos)[3]
    for t in range(n):
        for h in range(H):
            kk, vv = Kc2[1, :pos[t] + 1, h // (H // KV)], Vc2[1, :pos[t] + 1, h // (H // KV)]
            s = kk @ Q[t, h * hd:(h + 1) * hd] / np.sqrt(hd)
            p = np.exp(s - s.max())
            np.testing.assert_allclose(o[t, h * hd:(h + 1) * hd], p @ vv / p.sum(), rtol=1e-4, atol=1e-5)
    # fused: norm + rope + cache write + attention from the QKV rows in one kernel, serial and parallel
    for par in (True, False):
        fo = call(build(K.make_rope_attention("ra", H, KV, hd, eps, theta, K.Knobs(parallel=par))), X, qn, kn, Kc.copy(), Vc.copy(),
                  np.zeros((n, H * hd), np.float32), slots, pos)
        np.testing.assert_allclose(fo[3], Kc2, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(fo[4], Vc2)
        np.testing.assert_allclose(fo[5], o, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scoring,use_bias,norm,scale", [("sigmoid", True, True, 1.0), ("softmax", False, False, 2.5)])
def test_moe(scoring, use_bias, norm, scale):
    E, k, D, F, n = 6, 2, 16, 8, 3
    lg, bias = r(n, E), r(E)
    idx, w = call(build(K.make_moe_route("rt", E, k, scoring, use_bias, norm, 1e-6, scale)), lg, bias,
                  np.zeros((n, k), np.int32), np.zeros((n, k), np.float32))[2:]
    sc = 1 / (1 + np.exp(-lg)) if scoring == "sigmoid" else np.exp(lg) / np.exp(lg).sum(-1, keepdims=True)
    sel = np.argsort(-(sc + (bias if use_bias else 0)), -1)[:, :k]
    ws = np.take_along_axis(sc, sel, -1)
    ws = (ws / (ws.sum(-1, keepdims=True) + 1e-6) if norm else ws) * scale
    np.testing.assert_array_equal(idx, sel)
    np.testing.assert_allclose(w, ws, rtol=1e-5)
    x, gu, dn = r(n, D), r(E, 2 * F, D), r(E, D, F)
    l = 8
    h = call(build(K.make_moe_gate_up("gu", E, 2 * F, D, k, KN)), x,
             np.stack([pack(gu[e], l) for e in range(E)]), idx, np.zeros((n * k, 2 * F), np.float32))[3]
    ref_h = np.stack([gu[idx[t, j]] @ x[t] for t in range(n) for j in range(k)])
    np.testing.assert_allclose(h, ref_h, rtol=1e-5, atol=1e-5)
    a = r(n * k, F)
    y = call(build(K.make_moe_down("dn", E, D, F, k, KN)), a, np.stack([pack(dn[e], l) for e in range(E)]),
             idx, w, np.zeros((n, D), np.float32))[4]
    ref_y = np.stack([sum(w[t, j] * dn[idx[t, j]] @ a[t * k + j] for j in range(k)) for t in range(n)])
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rms,acc,bias,swiglu", [(True, False, False, False), (False, True, True, False),
                                                  (True, True, False, False), (True, False, False, True),
                                                  (False, False, False, True)])
@pytest.mark.parametrize("quant", [None, ("q8",), ("q4", 8, False), ("q4", 16, True)])
@pytest.mark.parametrize("knobs", [K.Knobs(8, 4, 3), K.Knobs(8, 1, 8)])
def test_matmul_fused(rms, acc, bias, swiglu, quant, knobs):
    _check_matmul(rms, acc, bias, swiglu, quant, knobs)


@pytest.mark.parametrize("swiglu", [False, True])
@pytest.mark.parametrize("quant", [None, ("f16",), ("q8",), ("q8", 16), ("q4", 16, True)])
@pytest.mark.parametrize("panels,knobs", [(2, K.Knobs(8, 1, 8)), (3, K.Knobs(8, 1, 8)), (6, K.Knobs(8, 4, 3))])
def test_matmul_interleaved_panels(swiglu, quant, panels, knobs):
    """Weights with ``panels`` panels interleaved per input row (the decode GEMV layout), read by schedules
    whose register columns match the interleave or not (prefill's 4 x 3 tile over 6 interleaved panels)."""
    _check_matmul(True, not swiglu, False, swiglu, quant, knobs, panels)


def _check_matmul(rms, acc, bias, swiglu, quant, knobs, panels=1):
    from lfmc.ir.quant import dequantize, quantize
    from lfmc.targets.lower import pack_weight

    N, Kd, eps = 48, 64, 1e-5
    f = build(K.make_matmul("mmf", N, Kd, knobs, bias, eps if rms else None, acc, swiglu, quant, panels=panels))
    rows = -(-5 // knobs.rows) * knobs.rows
    x, nw, b, res = r(rows, Kd), r(Kd), r(N), r(rows, N)
    w = r(2 * N if swiglu else N, Kd)
    qargs = []
    if quant == ("f16",):
        w = w.astype(np.float16)
        packed, _ = pack_weight(w, None, None, quant, 8, swiglu, panels)
        w = w.astype(np.float32)
    elif quant:
        bits, group, asym = (8, quant[1] if len(quant) > 1 else None, False) if quant[0] == "q8" else (4, quant[1], quant[2])
        codes, scale, zero = quantize(w, bits, group, asym)
        w = dequantize(codes, scale, zero, "i8" if bits == 8 else "u4")     # what the kernel must compute
        packed, qargs = pack_weight(codes, scale, zero, quant, 8, swiglu, panels)
    else:
        packed, _ = pack_weight(w, None, None, None, 8, swiglu, panels)
    xin = x * nw / np.sqrt((x * x).mean(-1, keepdims=True) + eps) if rms else x
    y = xin @ w.T
    if swiglu:
        want = y[:, :N] / (1 + np.exp(-y[:, :N])) * y[:, N:]
    else:
        want = y + (b if bias else 0) + (res if acc else 0)
    ot = tvm.runtime.tensor(res.copy())
    args = [x, packed] + qargs + ([nw] if rms else []) + ([b] if bias else []) + ([ot] if acc else [])
    call(f, *(args + [ot, rows // knobs.rows]))
    np.testing.assert_allclose(ot.numpy(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("panels", [1, 4])
@pytest.mark.parametrize("quant", [None, ("q8",), ("q4", 8, False), ("q4", 16, True)])
def test_embedding_quantized(quant, panels):
    from lfmc.ir.quant import dequantize, quantize
    from lfmc.targets.lower import pack_weight

    V, D = 64, 32
    table = r(V, D)
    tok = np.array([0, 63, 9, 9, 17], np.int32)
    if quant:
        bits, group, asym = (8, quant[1] if len(quant) > 1 else None, False) if quant[0] == "q8" else (4, quant[1], quant[2])
        codes, scale, zero = quantize(table, bits, group, asym)
        table = dequantize(codes, scale, zero, "i8" if bits == 8 else "u4")
        packed, qargs = pack_weight(codes, scale, zero, quant, 8, False, panels)
    else:
        packed, qargs = pack_weight(table, None, None, None, 8, False, panels)
    out = call(build(K.make_embedding("eq", V, D, 8, quant, panels=panels)), tok, packed, *qargs,
               np.zeros((5, D), np.float32))[-1]
    np.testing.assert_allclose(out, table[tok], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n,chunk", [(1, 4), (7, 4), (37, 8), (64, 16)])
def test_recurrence_chunked_scan_equals_sequential(n, chunk):
    """The parallel-in-time scan (pieces, carries, rescan) equals the sequential scan, state included."""
    D, S = 12, 3
    P, st = r(n, 4 * D), r(S, D)
    args = (1, 2, 3, 0)
    seq = call(build(K.make_recurrence_prefill("rs", D, *args)), P, st.copy(), np.zeros((n, D), np.float32), 2)
    par = call(build(K.make_recurrence_scan("rc", D, *args, chunk=chunk)), P, st.copy(),
               np.zeros((n, D), np.float32), 2)
    np.testing.assert_allclose(par[2], seq[2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(par[1], seq[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(par[1][[0, 1]], st[[0, 1]])


@pytest.mark.parametrize("H,KV,hd", [(2, 2, 16), (4, 2, 8), (6, 2, 16)])
def test_attention_over_many_blocks(H, KV, hd):
    """Positions crossing the CPU kernel's blocks of 32 (first, last, one past a block, deep), GQA groups of
    1 to 3 heads, scores spread wide enough that the running max changes between blocks."""
    S, C = 2, 200
    pos = np.array([0, 31, 32, 33, 64, 150, 199], np.int32)
    n = pos.size
    Q = r(n, H * hd) * 3
    Kc, Vc = r(S, C, KV, hd), r(S, C, KV, hd)
    slots = np.array([0, 1, 0, 1, 0, 1, 0], np.int32)
    for kn_ in (K.Knobs(parallel=True), K.Knobs(parallel=False)):
        o = call(build(K.make_attention("at", H, KV, hd, kn_)), Q, Kc, Vc, np.zeros((n, H * hd), np.float32),
                 slots, pos)[3]
        for t in range(n):
            for h in range(H):
                kk, vv = Kc[slots[t], :pos[t] + 1, h // (H // KV)], Vc[slots[t], :pos[t] + 1, h // (H // KV)]
                s = kk.astype(np.float64) @ Q[t, h * hd:(h + 1) * hd] / np.sqrt(hd)
                p = np.exp(s - s.max())
                np.testing.assert_allclose(o[t, h * hd:(h + 1) * hd], p @ vv / p.sum(), rtol=2e-5, atol=2e-6)


def _int8_rows(x):
    """float rows [..., hd] as an int8 cache stores them: codes, then the float32 scale's 4 bytes."""
    from lfmc.ir.interp import kv_round

    amax = np.abs(x).max(-1, keepdims=True).astype(np.float32)
    codes = np.rint(x * (np.float32(127) / amax)).astype(np.int8)
    out = np.concatenate([codes, (amax * np.float32(1 / 127)).astype(np.float32).view(np.int8)], -1)
    np.testing.assert_array_equal(_dequant_rows(out), kv_round(x, "i8"))
    return out


def _dequant_rows(c):
    hd = c.shape[-1] - 4
    return c[..., :hd].astype(np.float32) * np.ascontiguousarray(c[..., hd:]).view(np.float32)


def test_int8_cache_rows_are_written_as_the_interpreter_rounds_them():
    """qk_rope and the fused rope-attention into an int8 cache: each (position, head) row of k (normed, rotated)
    and v is the interpreter's kv_round of the f32 kernel's row, bit for bit, scale in the row's last 4 bytes;
    attention over it equals numpy's over the dequantized rows."""
    from lfmc.ir.interp import kv_round

    H, KV, hd, S, C, n = 4, 2, 16, 2, 40, 7
    eps, theta = 1e-5, 1e4
    X, qn, kn = r(n, (H + 2 * KV) * hd) * 3, r(hd), r(hd)
    X[2, H * hd:(H + 1) * hd] = 0                                      # an all-zero key row stays zero
    slots, pos = np.full(n, 1, np.int32), np.arange(5, 5 + n, dtype=np.int32)
    z32, z8 = np.zeros((S, C, KV, hd), np.float32), np.zeros((S, C, KV, hd + 4), np.int8)
    ref = call(build(K.make_qk_rope("qk", H, KV, hd, eps, theta)), X, qn, kn, z32.copy(), z32.copy(),
               np.zeros((n, H * hd), np.float32), slots, pos)
    got = call(build(K.make_qk_rope("qk8", H, KV, hd, eps, theta, kv="int8")), X, qn, kn, z8.copy(), z8.copy(),
               np.zeros((n, H * hd), np.float32), slots, pos)
    for c in (3, 4):
        np.testing.assert_array_equal(_dequant_rows(got[c][1, 5:5 + n]), kv_round(ref[c][1, 5:5 + n], "i8"))
        assert not got[c][0].any() and not got[c][1, :5].any()
    assert not _dequant_rows(got[3][1, 7, 0]).any()
    o = call(build(K.make_attention("at8", H, KV, hd, kv="int8")), got[5], got[3], got[4],
             np.zeros((n, H * hd), np.float32), slots, pos)[3]
    fused = call(build(K.make_rope_attention("ra8", H, KV, hd, eps, theta, kv="int8")), X, qn, kn, z8.copy(),
                 z8.copy(), np.zeros((n, H * hd), np.float32), slots, pos)
    np.testing.assert_array_equal(fused[3], got[3])
    np.testing.assert_array_equal(fused[4], got[4])
    for t in range(n):
        for h in range(H):
            kk, vv = (_dequant_rows(got[c][1, :pos[t] + 1, h // (H // KV)]).astype(np.float64) for c in (3, 4))
            s = kk @ got[5][t, h * hd:(h + 1) * hd] / np.sqrt(hd)
            p = np.exp(s - s.max())
            for out in (o, fused[5]):
                np.testing.assert_allclose(out[t, h * hd:(h + 1) * hd], p @ vv / p.sum(), rtol=2e-5, atol=2e-6)
    with pytest.raises(ValueError, match="CPU attention kernels only"):
        K.make_attention("g", H, KV, hd, K.Knobs(lanes=1, rows=1, cols=1, gpu=True), kv="int8")


@pytest.mark.parametrize("kv", ["float32", "float16", "int8"])
@pytest.mark.parametrize("window,gated,H,KV,hd", [(0, False, 4, 2, 16), (700, True, 4, 2, 16), (700, True, 16, 4, 32)])
def test_attention_splits_a_long_context_across_threads(kv, window, gated, H, KV, hd):
    """One to three rows deep in a 2,048-row cache: the CPU kernel splits each row's positions into up to 8 ranges
    (flash-decoding: fewer per row with more rows), attends them in parallel and merges them; the same attention
    as numpy's over the whole range, f32, f16 and int8 caches, full and sliding-window, gated heads, parallel and
    serial. 16 heads take the other paths: every head's scores of a position reduced together (H a multiple of
    the vector width), and for an f16 cache the values in chunks of every head with the V rows prefetched."""
    from lfmc.targets.kernels.attention import ATT_MIN_SPLIT, ATT_SPLITS

    S, C = 2, 2048
    assert C > ATT_SPLITS * ATT_MIN_SPLIT // 2
    if kv == "int8":
        Kc, Vc = _int8_rows(r(S, C, KV, hd)), _int8_rows(r(S, C, KV, hd))
    else:
        Kc, Vc = r(S, C, KV, hd).astype(kv), r(S, C, KV, hd).astype(kv)
    fs = {par: build(K.make_attention("at", H, KV, hd, K.Knobs(parallel=par), kv=kv, window=window, gated=gated))
          for par in ((True, False) if H == 4 else (True,))}          # built once, called on every row count
    for pos in (np.array([2047], np.int32), np.array([1999, 600], np.int32), np.array([300, 2047, 5], np.int32)):
        n = pos.size
        Q = np.concatenate([r(n, H * hd) * 2, r(n, H)], 1) if gated else r(n, H * hd) * 2
        slots = np.arange(n, dtype=np.int32) % S
        for par, f in fs.items():
            o = call(f, Q, Kc, Vc, np.zeros((n, H * hd), np.float32), slots, pos)[3]
            for t in range(n):
                lo = max(0, pos[t] - window + 1) if window else 0
                for h in range(H):
                    kk, vv = (c[slots[t], lo:pos[t] + 1, h // (H // KV)] for c in (Kc, Vc))
                    if kv == "int8":
                        kk, vv = _dequant_rows(kk), _dequant_rows(vv)
                    kk, vv = kk.astype(np.float64), vv.astype(np.float64)
                    s = kk @ Q[t, h * hd:(h + 1) * hd] / np.sqrt(hd)
                    p = np.exp(s - s.max())
                    want = p @ vv / p.sum() * (1 / (1 + np.exp(-Q[t, H * hd + h])) if gated else 1)
                    np.testing.assert_allclose(o[t, h * hd:(h + 1) * hd], want, rtol=2e-5, atol=2e-6,
                                               err_msg=f"pos {pos.tolist()} row {t} head {h} par {par}")


def _a8_supported() -> bool:
    from lfmc.targets.host import cpu_features

    return bool(cpu_features()["avx2"])


a8 = pytest.mark.skipif(not _a8_supported(), reason="int8-activation kernels need x86 AVX2")


def _qweights(w, quant):
    from lfmc.ir.quant import dequantize, quantize

    bits, group, asym = (8, quant[1] if len(quant) > 1 else None, False) if quant[0] == "q8" else (4, quant[1], quant[2])
    codes, scale, zero = quantize(w, bits, group, asym)
    return codes, scale, zero, dequantize(codes, scale, zero, "i8" if bits == 8 else "u4")


@a8
@pytest.mark.parametrize("N,Kd,rms,acc,bias,swiglu", [
    (72, 64, False, False, False, False), (60, 96, True, False, True, False), (64, 70, False, True, False, False),
    (40, 64, True, False, False, True), (200, 128, False, True, True, False), (24, 32, True, True, False, True)])
@pytest.mark.parametrize("quant", [("q8",), ("q8", 32), ("q4", 32, False), ("q4", 32, True), ("q4", 64, False)])
@pytest.mark.parametrize("knobs", [K.Knobs(8, 4, 3, dot="avx2"), K.Knobs(8, 1, 8, dot="avx2")])
def test_matmul_int8_activations(N, Kd, rms, acc, bias, swiglu, quant, knobs):
    """make_matmul_a8 against numpy on the interpreter's semantics (lfmc/ir/quant.py): inputs quantized per 32,
    weights dequantized; N not a multiple of 8 / of the interleave, K not a multiple of 32 (int8), every fusion.
    The products are exact integers, so only float rounding separates the two."""
    from lfmc.ir.quant import fake_quantize_activations, quantize_activations
    from lfmc.targets.lower import pack_weight_a8

    if len(quant) > 1 and Kd % quant[1]:
        pytest.skip("weight groups must divide K")
    eps = 1e-5
    il = K.a8_interleave(N, swiglu, K.Knobs(8, 1, 8), quant)
    f = build(K.make_matmul_a8("mma8", N, Kd, knobs, bias, eps if rms else None, acc, swiglu, quant, il))
    rows = -(-5 // knobs.rows) * knobs.rows
    x, nw, b, res = r(rows, Kd), r(Kd), r(N), r(rows, N)
    codes, scale, zero, w = _qweights(r(2 * N if swiglu else N, Kd) * 0.1, quant)
    packed, qargs = pack_weight_a8(codes, scale, zero, quant, swiglu, il)
    xin = nw * (x / np.sqrt((x * x).mean(-1, keepdims=True) + np.float32(eps))) if rms else x
    q, d = quantize_activations(xin, 32)
    assert q.dtype == np.int8 and np.abs(q).max() == 127 and d.shape == (rows, -(-Kd // 32))
    y = fake_quantize_activations(xin, 32) @ w.T
    want = y[:, :N] / (1 + np.exp(-y[:, :N])) * y[:, N:] if swiglu else y
    want = want + (b if bias else 0) + (res if acc else 0)
    ot = tvm.runtime.tensor(res.copy())
    args = [x, packed] + qargs + ([nw] if rms else []) + ([b] if bias else []) + ([ot] if acc else [])
    call(f, *(args + [ot, rows // knobs.rows]))
    np.testing.assert_allclose(ot.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@a8
@pytest.mark.parametrize("quant", [("q8",), ("q8", 32), ("q4", 32, False), ("q4", 32, True)])
def test_embedding_int8_activation_layout(quant):
    """A tied table packed for the int8-activation LM head is read by the embedding in that layout."""
    from lfmc.targets.lower import pack_weight_a8

    V, D = 100, 64
    codes, scale, zero, table = _qweights(r(V, D), quant)
    il = K.a8_interleave(V, False, K.Knobs(8, 1, 8), quant)
    packed, qargs = pack_weight_a8(codes, scale, zero, quant, False, il)
    tok = np.array([0, 99, 9, 9, 57], np.int32)
    out = call(build(K.make_embedding("ea8", V, D, 4, quant, False, il)), tok, packed, *qargs,
               np.zeros((5, D), np.float32))[-1]
    np.testing.assert_allclose(out, table[tok], rtol=1e-6, atol=1e-6)


def test_int8_activation_layout_errors():
    with pytest.raises(ValueError, match="multiples of 32"):
        K.a8_layout(64, 64, ("q4", 16, False), False, 1)
    with pytest.raises(ValueError, match="no int8-activation kernel"):
        K.a8_layout(64, 64, ("f16",), False, 1)


def test_cpu_loop_kernels_call_no_workspace_allocator():
    """CPU loop kernels keep their scratch on the stack and their scalars in registers: TVM 0.27 turns a
    "local" buffer or a plain ``x = ...`` binding into a TVMBackendAllocWorkspace call per loop iteration
    (conv decode took 68 us instead of 4 for 1,024 channels). Checked on the generated assembly."""
    kn = K.Knobs(8, 4, 3)
    for f in (K.make_conv_decode("c", 64, 3, 0, 1, 2, kn), K.make_conv_prefill("p", 64, 3, 0, 1, 2, kn),
              K.make_rmsnorm("n", 64, 1e-5, kn), K.make_rope_attention("a", 4, 2, 16, 1e-5, 1e4, kn),
              K.make_moe_route("r", 8, 2, "sigmoid", True, True, 1e-20, 1.0, kn),
              K.make_recurrence_decode("d", 64, 0, 1, 2, 3, kn)):
        name = f.attrs["global_symbol"]
        asm = tvm.compile(tvm.IRModule({name: f}), target=host_target()).mod.inspect_source("asm")
        fn, calls = None, set()
        for ln in asm.splitlines():
            if ln and not ln.startswith(("\t", ".", " ")) and ln.endswith(":"):
                fn = ln[:-1]
            elif ln.startswith("\t") and not ln.startswith("\t.") and "TVMBackendAllocWorkspace" in ln:
                calls.add(fn)
        # the attention's per-call scratch (rotated queries, the ranges' partial results) is allocated once per
        # call, in the kernel's body, outside its parallel loops; nothing else allocates
        assert calls <= ({f"{name}_compute_"} if name == "a" else set()), (name, calls)


def _has_vnni() -> bool:
    from lfmc.targets.host import cpu_features

    f = cpu_features()
    return bool(f.get("avx512_vnni") or f.get("avxvnni"))


@a8
@pytest.mark.skipif(not _has_vnni(), reason="the VNNI kernels need AVX512-VNNI or AVX-VNNI to run (their code is "
                                            "checked by test_int8_kernels_use_their_isas_dot_product)")
@pytest.mark.parametrize("N,Kd,rms,acc,bias,swiglu", [(60, 96, True, False, True, False), (40, 64, True, True, False, True)])
@pytest.mark.parametrize("quant", [("q8",), ("q8", 32), ("q4", 32, False), ("q4", 32, True), ("q4", 64, False)])
@pytest.mark.parametrize("rows,cols", [(4, 3), (4, 6), (1, 8)])
def test_vnni_matmul_equals_the_avx2_one(N, Kd, rms, acc, bias, swiglu, quant, rows, cols):
    """The vpdpbusd kernel computes the same integer sums as pmaddubsw + pmaddwd: equal outputs, bit for bit."""
    from lfmc.targets.lower import pack_weight_a8

    if Kd % (quant[1] if len(quant) > 1 else 32):
        pytest.skip("weight groups must divide K")
    il = K.a8_interleave(N, swiglu, K.Knobs(8, 1, 8), quant)
    x, nw, b, res = r(8, Kd), r(Kd), r(N), r(8, N)
    codes, scale, zero, _ = _qweights(r(2 * N if swiglu else N, Kd) * 0.1, quant)
    packed, qargs = pack_weight_a8(codes, scale, zero, quant, swiglu, il)
    outs = []
    for vnni in (False, True):
        kn = K.Knobs(8, rows, cols, dot="vnni" if vnni else "avx2")
        f = build(K.make_matmul_a8("mma8", N, Kd, kn, bias, 1e-5 if rms else None, acc, swiglu, quant, il))
        ot = tvm.runtime.tensor(res.copy())
        args = [x, packed] + qargs + ([nw] if rms else []) + ([b] if bias else []) + ([ot] if acc else [])
        call(f, *(args + [ot, 8 // rows]))
        outs.append(ot.numpy())
    np.testing.assert_array_equal(outs[1], outs[0])


@pytest.mark.parametrize("quant", [("q8",), ("q8", 32), ("q4", 32, False)])
@pytest.mark.parametrize("dot,profile,lanes", [("avx2", "x86-64-v3", 8), ("vnni", "xeon-sapphirerapids", 8),
                                               ("vnni", "alderlake", 8),
                                               ("sdot", "snapdragon-8gen3:cpu", 4), ("i8mm", "snapdragon-8gen3:cpu", 4)])
def test_int8_kernels_use_their_isas_dot_product(quant, dot, profile, lanes):
    """Each int8-activation kernel family (matmul_a8.DOT) has its instruction in its code and no other family's:
    vpdpbusd with VNNI (compiled for a Sapphire Rapids CPU, and for an Alder Lake, whose AVX-VNNI without AVX-512
    takes the VEX form: CPUs these are not, only the code is checked), pmaddubsw with AVX2, sdot on arm64, smmla with
    i8mm in a tile of 4 rows (one row: sdot; Arm numerics run under qemu: tests/targets/arm)."""
    from lfmc.targets.kernels.matmul_a8 import DOT
    from lfmc.targets.profiles import get_profile

    target = (tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "alderlake"})
              if profile == "alderlake" else get_profile(profile).target())

    def opcodes(rows):
        kn = K.Knobs(lanes, rows, 3, dot=dot)
        f = K.make_matmul_a8("mma8", 64, 128, kn, False, None, False, False, quant, 1)
        asm = tvm.compile(tvm.IRModule({"mma8": f}), target=target).mod.inspect_source("asm")
        if profile == "alderlake":
            assert "{vex}\tvpdpbusd" in asm and "zmm" not in asm
        return {w for ln in asm.splitlines() if ln.startswith("\t") for w in ln.split()[:2]}   # "{vex} vpdpbusd" too

    ops = opcodes(4)
    assert DOT[dot].instruction in ops, (dot, quant)
    # (i8mm's kernels have sdot too: LLVM vectorizes the prologue's code sums with it under +dotprod)
    others = {d.instruction for k, d in DOT.items() if k != dot} - {DOT[dot].instruction}
    assert not ops & (others - ({"sdot"} if dot == "i8mm" else set()))
    if dot == "i8mm":
        assert {"sdot"} <= opcodes(1) and "smmla" not in opcodes(1)


_AMX_CASES = [(72, 64, False, False, False, False), (40, 96, True, True, True, True), (200, 128, True, False, False, False),
              (24, 32, False, True, False, True)]


@a8
@pytest.mark.skipif(not _has_vnni(), reason="the AMX kernels' TensorIR runs here with vpdpbusd for each tile product "
                                            "(their AMX code is checked by test_amx_kernels_multiply_tiles)")
@pytest.mark.parametrize("N,Kd,rms,acc,bias,swiglu", _AMX_CASES)
@pytest.mark.parametrize("quant", [("q8",), ("q8", 32)])
@pytest.mark.parametrize("rows", [4, 8, 16])
def test_amx_int8_tiles_equal_the_vnni_kernel(N, Kd, rms, acc, bias, swiglu, quant, rows):
    """The AMX int8 kernel (R x 32 activation tile times 8 x 64 weight tile per group of 32: tdpbusd), run with each
    tile product done by vpdpbusd (QEMU and this CPU have no AMX): the VNNI kernel's outputs bit for bit, on the
    same packed weights (blocks paired, il 2, or gate | up), padded N (72 = 9 blocks), fused norm / bias /
    residual / SwiGLU, 4 to 16 rows per tile."""
    from lfmc.targets.lower import pack_weight_a8

    il = K.a8_interleave(N, swiglu, K.Knobs(8, 1, 8), quant, amx=True)
    assert il == (1 if swiglu else 2)
    x, nw, b, res = r(16, Kd), r(Kd), r(N), r(16, N)
    codes, scale, zero, _ = _qweights(r(2 * N if swiglu else N, Kd) * 0.1, quant)
    packed, qargs = pack_weight_a8(codes, scale, zero, quant, swiglu, il)
    outs = []
    for dot in ("vnni", "amx-emulated"):
        kn = K.Knobs(16, rows, 3, dot=dot, a8_cols=6)
        c = K.matmul_a8._A8(N, Kd, kn, bias, None, acc, swiglu, quant, il)
        assert (c.amx is not None) == (dot != "vnni")
        f = build(K.make_matmul_a8("mma8", N, Kd, kn, bias, 1e-5 if rms else None, acc, swiglu, quant, il))
        ot = tvm.runtime.tensor(res.copy())
        args = [x, packed] + qargs + ([nw] if rms else []) + ([b] if bias else []) + ([ot] if acc else [])
        call(f, *(args + [ot, 16 // rows]))
        outs.append(ot.numpy())
    np.testing.assert_array_equal(outs[1], outs[0])


@pytest.mark.parametrize("swiglu", [False, True])
@pytest.mark.parametrize("kind", ["int8", "int8 grouped", "bf16"])
def test_amx_kernels_multiply_tiles(kind, swiglu):
    """The AMX kernels compiled for a Sapphire Rapids CPU (none here: the code is checked) configure tiles and
    multiply them in their inner loop: tdpbusd (int8) / tdpbf16ps (bf16) on tiles loaded by tileloadd, the
    stand-in calls gone (lfmc/targets/llvm_ir.py substitutes them); the families without AMX have none of it."""
    from lfmc.targets.profiles import get_profile

    tgt = get_profile("xeon-sapphirerapids").target()

    def opcodes(fam):
        if kind == "bf16":
            f = K.make_matmul_bf16("mm", 64, 128, K.Knobs(16, 4, 3, bf16dot=fam), False, 1e-5, False, swiglu, kpad=32)
        else:
            quant = ("q8", 32) if kind == "int8 grouped" else ("q8",)
            f = K.make_matmul_a8("mm", 64, 128, K.Knobs(16, 4, 3, dot=fam), False, 1e-5, False, swiglu, quant,
                                 1 if swiglu else 2)
        m = _build_bf16(f, tgt)
        asm = m.inspect_source("s")
        assert "lfmc_amx" not in asm
        return {w for ln in asm.splitlines() if ln.startswith("\t") for w in ln.split()[:1]}

    want = "tdpbf16ps" if kind == "bf16" else "tdpbusd"
    ops = opcodes("amx")
    assert {want, "tileloadd", "ldtilecfg", "tilerelease"} <= ops
    assert not {"tdpbusd", "tdpbf16ps"} & opcodes("avx512bf16" if kind == "bf16" else "vnni")


def _build_bf16(f, target=None):
    """A bf16-activation kernel built as the backends build it (vdpbf16ps substituted into its LLVM IR)."""
    from lfmc.targets.llvm_ir import rebuild

    lib = tvm.compile(tvm.IRModule({"mmbf": f}), target=target or host_target())
    return rebuild(lib)


def _bf16_case(N, Kd, rms, acc, bias, swiglu, kn, rows=8, kpad=0):
    """Inputs, packed weight and the numpy reference of a bf16-activation matmul (activations rounded to bf16,
    products summed in float64: the kernel's float32 sums are within 1e-6 of it). The inputs come from a generator
    seeded by the case, not the module's: a normed activation within an f32 rounding of a bf16 rounding boundary
    may round the other way in the kernel (its mean of squares sums in another order), one bf16 step (~1e-4 in
    the outputs), and which cases hit one must not depend on the tests that ran before."""
    import ml_dtypes

    from lfmc.ir.quant import round_bf16
    from lfmc.targets.knobs import bf16_kpad, bf16_lanes
    from lfmc.targets.lower import pack_weight_bf16

    g = np.random.default_rng([N, Kd, rms, acc, bias, swiglu, rows, kpad])

    def r(*shape):
        return g.standard_normal(shape).astype(np.float32)

    x, nw, b, res = r(rows, Kd), r(Kd), r(N), r(rows, N)
    w = (r(2 * N if swiglu else N, Kd) * 0.1).astype(ml_dtypes.bfloat16)
    xs = x * nw / np.sqrt((x * x).mean(1, keepdims=True) + 1e-5) if rms else x
    y = round_bf16(xs).astype(np.float64) @ w.astype(np.float64).T
    if swiglu:
        g, u = y[:, :N], y[:, N:]
        y = g / (1 + np.exp(-g)) * u
    y = y + (b if bias else 0) + (res if acc else 0)
    packed, _ = pack_weight_bf16(w, swiglu, bf16_lanes(kn), kpad or bf16_kpad(kn))
    args = [x, packed] + ([nw] if rms else []) + ([b] if bias else [])
    return args, res, y


def _run_bf16(f, args, res, acc, rows, total=8):
    ot = tvm.runtime.tensor(res.copy())
    f(*[tvm.runtime.tensor(a) for a in args] + ([ot] if acc else []) + [ot, total // rows])
    return ot.numpy()


def _has_bf16() -> bool:
    from lfmc.targets.host import cpu_features

    return bool(cpu_features().get("avx512_bf16"))


@pytest.mark.parametrize("N,Kd,rms,acc,bias,swiglu", [(60, 96, True, False, True, False), (40, 65, False, True, False, True),
                                                      (128, 64, True, True, False, False)])
@pytest.mark.parametrize("rows,cols", [(4, 3), (1, 8)])
def test_bf16_activation_matmul_with_fma(N, Kd, rms, acc, bias, swiglu, rows, cols):
    """The FMA family (any CPU with FMA): bf16-rounded activations times bf16 weights, within 1e-5 of the
    float64 sums, on padded N and odd K, fused norm / bias / residual / SwiGLU."""
    kn = K.Knobs(8, rows, cols, bf16dot="fma")
    args, res, want = _bf16_case(N, Kd, rms, acc, bias, swiglu, kn)
    f = build(K.make_matmul_bf16("mmbf", N, Kd, kn, bias, 1e-5 if rms else None, acc, swiglu))
    np.testing.assert_allclose(_run_bf16(f, args, res, acc, rows), want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not _has_bf16(), reason="vdpbf16ps needs AVX512-BF16 to run (its code is checked by "
                                           "test_bf16_kernels_use_their_isas_instruction)")
@pytest.mark.parametrize("N,Kd,rms,acc,bias,swiglu", [(60, 96, True, False, True, False), (40, 65, False, True, False, True)])
@pytest.mark.parametrize("rows,cols", [(4, 3), (1, 8)])
def test_vdpbf16ps_matmul_equals_the_fma_one(N, Kd, rms, acc, bias, swiglu, rows, cols):
    """vdpbf16ps adds each pair's odd product, then its even one, rounding each sum once: the FMA family's sums,
    bit for bit (16 lanes both)."""
    outs = []
    for fam in ("fma", "avx512bf16"):
        kn = K.Knobs(16, rows, cols, bf16dot=fam)
        args, res, want = _bf16_case(N, Kd, rms, acc, bias, swiglu, kn) if not outs else (args, res, want)
        f = _build_bf16(K.make_matmul_bf16("mmbf", N, Kd, kn, bias, 1e-5 if rms else None, acc, swiglu))["mmbf"]
        outs.append(_run_bf16(f, args, res, acc, rows))
    np.testing.assert_array_equal(outs[1], outs[0])
    np.testing.assert_allclose(outs[1], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("N,Kd,rms,acc,bias,swiglu", [(60, 96, True, False, True, False), (40, 65, False, True, False, True),
                                                      (33, 40, True, True, True, True)])
@pytest.mark.parametrize("rows", [4, 8, 16])
def test_amx_bf16_tiles_equal_the_fma_kernel(N, Kd, rms, acc, bias, swiglu, rows):
    """The AMX bf16 kernel (R x 32 activation tile times 16 x 32 weight tile per 32 inputs: tdpbf16ps), run with
    each tile product done by FMA pairs (no AMX here): the FMA family's outputs bit for bit on the same packed
    weights (K padded to 32), within 1e-5 of the float64 sums. AMX hardware orders each pair's two products its
    own way: its sums may differ from these in the last bit."""
    outs = []
    for fam in ("fma", "amx-emulated"):
        kn = K.Knobs(16, rows, 3, bf16dot=fam)
        if not outs:
            args, res, want = _bf16_case(N, Kd, rms, acc, bias, swiglu, kn, rows=16, kpad=32)
        f = build(K.make_matmul_bf16("mmbf", N, Kd, kn, bias, 1e-5 if rms else None, acc, swiglu, kpad=32))
        outs.append(_run_bf16(f, args, res, acc, rows, 16))
    np.testing.assert_array_equal(outs[1], outs[0])
    np.testing.assert_allclose(outs[1], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fam,profile,lanes,want", [("avx512bf16", "xeon-sapphirerapids", 16, "vdpbf16ps"),
                                                   ("fma", "x86-64-v3", 8, "vfmadd231ps"),
                                                   ("fma", "snapdragon-8gen3:cpu", 4, "fmla"),
                                                   ("bfmmla", "snapdragon-8gen3:cpu", 4, "bfmmla")])
def test_bf16_kernels_use_their_isas_instruction(fam, profile, lanes, want):
    """vdpbf16ps (substituted into the LLVM IR: TVM cannot call it) in the AVX512-BF16 kernel's code, compiled for
    a Sapphire Rapids CPU; float32 FMAs in the FMA family's, on x86 and arm64; bfmmla (substituted the same way) in a
    4-row Arm tile (its numerics run under qemu: tests/targets/arm)."""
    from lfmc.targets.profiles import get_profile

    kn = K.Knobs(lanes, 4, 3, bf16dot=fam)
    m = _build_bf16(K.make_matmul_bf16("mmbf", 64, 128, kn, False, 1e-5, False, True), get_profile(profile).target())
    ops = {w for ln in m.inspect_source("s").splitlines() if ln.startswith("\t") for w in ln.split()[:1]}
    assert want in ops, (fam, profile)
    assert ("vdpbf16ps" in ops) == (fam == "avx512bf16")


@pytest.mark.parametrize("kind,family", [("f32", {}), ("int8", {"dot": "avx2"}), ("int8", {"dot": "vnni"}),
                                         ("bf16", {"bf16dot": "fma"}), ("bf16", {"bf16dot": "avx512bf16"})])
def test_peak_kernels_do_the_work_they_count(kind, family):
    """The peak kernel of each family (what ``lfmc bench --profile`` sets matmuls against) runs the family's
    instruction on every accumulator every iteration: with all operands 1, each accumulator lane ends at iters x
    the products per lane and step (float32 FMA 1, int8 quad 4, bf16 pair 2), the count peak_spec's operations
    assume."""
    from lfmc.targets.host import cpu_features
    from lfmc.targets.knobs import peak_spec

    feats = cpu_features()
    if family.get("dot") == "vnni" and not _has_vnni() or family.get("bf16dot") == "avx512bf16" and not _has_bf16():
        pytest.skip("this CPU lacks the family's instruction")
    kn = K.Knobs(16 if feats["avx512"] else 8, 4, 3, **family)
    spec = peak_spec(kind, kn)
    (ishape, idt), (oshape, odt) = spec["in"], spec["out"]
    f = _build_bf16(K.make_peak("mmbf", kind, kn))["mmbf"]
    out = tvm.runtime.tensor(np.zeros((2, *oshape), odt))
    f(tvm.runtime.tensor(np.full(ishape, 0x3F80 if idt == "uint16" else 1, idt)), out, 2, 1000)
    per = {"f32": 1, "int8": 4, "bf16": 2}[kind]
    np.testing.assert_array_equal(out.numpy(), np.full((2, *oshape), 1000 * per, odt))
    assert spec["ops_per_iter"] == 8 * 2 * per * oshape[1]        # accumulators x lanes x products x 2


@pytest.mark.parametrize("threads,rows,streams", [(1, 64, 1), (2, 8 * 2 * 5, 1), (3, 8 * 3 * 7, 1),
                                                   (2, 8 * 2 * 3 * 4, 3)])
def test_read_peak_kernel_reads_each_thread_s_share_once(threads, rows, streams):
    """The read-peak kernel (the memory bandwidth ``lfmc bench --profile`` sets decode matmuls against) adds every
    row of its buffer exactly once: thread p's accumulators sum rows p*n/P ... (p+1)*n/P - 1, accumulator a the
    rows congruent to a modulo PEAK_ACCS within that share (also when it reads the share as several streams)."""
    from lfmc.targets.knobs import PEAK_ACCS

    L = 8
    f = tvm.compile(tvm.IRModule({"rp": K.make_read_peak("rp", K.Knobs(L, 4, 3), streams)}),
                    target=host_target())["rp"]
    x = np.arange(rows * L, dtype=np.float32).reshape(rows, L) % 97
    out = tvm.runtime.tensor(np.zeros((threads, PEAK_ACCS, L), np.float32))
    f(tvm.runtime.tensor(x), out, threads)
    want = x.reshape(threads, rows // threads // PEAK_ACCS, PEAK_ACCS, L).sum(1)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("kind,want", [("f32", "fmla"), ("int8", "smmla"), ("bf16", "bfmmla")])
def test_arm_peak_kernels_use_the_prefill_tiles_instruction(kind, want):
    """On an arm64 profile with i8mm and bf16 the peak kernels measure the matrix instructions the prefill tiles
    use (smmla, bfmmla), with their operation counts (a 2 x 2 tile of 8 / 4 inputs per step)."""
    from lfmc.targets.arm import arm_knobs
    from lfmc.targets.knobs import peak_spec
    from lfmc.targets.profiles import get_profile

    kn = arm_knobs("prefill", "i8mm", "bfmmla")
    m = _build_bf16(K.make_peak("mmbf", kind, kn), get_profile("snapdragon-8gen3:cpu").target())
    assert want in {w for ln in m.inspect_source("s").splitlines() if ln.startswith("\t") for w in ln.split()[:1]}
    assert peak_spec(kind, kn)["ops_per_iter"] == 8 * {"f32": 8, "int8": 64, "bf16": 32}[kind]
