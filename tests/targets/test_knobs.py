"""The weight interleave rule (knobs.gemv_panels) on each CPU family's knobs: every tile reads whole groups;
float32 weights stay panel after panel."""
from __future__ import annotations

import dataclasses

import pytest

from lfmc.targets import knobs as KN
from lfmc.targets.arm import arm_knobs
from lfmc.targets.host import host_knobs

X86 = {"arch": "x86_64", "avx2": True, "fma": True, "avx512": True, "avx512_vnni": True, "avx512_bf16": True}


def _knobs(family: str) -> dict[str, KN.Knobs]:
    if family == "arm":
        return {e: arm_knobs(e, dot="sdot") for e in ("prefill", "decode")}
    feats = {**X86, "avx512": family == "avx512"}
    return {e: host_knobs(e, feats) for e in ("prefill", "decode")}


def _tiles(N: int, knobs: dict[str, KN.Knobs], swiglu: bool, quant) -> list[int]:
    """The columns (vectors) of every register tile a weight of N outputs is read by."""
    dec = knobs["decode"]
    l = KN.pick_lanes(N, dec.lanes)
    q = quant[0] if quant else None
    batch = dataclasses.replace(dec, cols=dec.batch_cols or dec.cols)
    return [KN.matmul_cols(N, l, k, swiglu, q) for k in (*knobs.values(), batch)]


@pytest.mark.parametrize("family,N,swiglu,quant,want", [
    ("avx512", 1024, False, ("f16",), 4), ("avx512", 3072, False, ("f16",), 4), ("avx512", 4608, True, ("f16",), 2),
    ("avx512", 65536, False, ("q8",), 4), ("avx512", 4608, True, ("bf16",), 2),
    ("arm", 1024, False, ("q8",), 4), ("arm", 4608, True, ("f16",), 2)])
def test_every_tile_reads_whole_groups(family, N, swiglu, quant, want):
    knobs = _knobs(family)
    P = KN.gemv_panels(N, knobs, quant, swiglu)
    assert P == want
    assert all(t % P == 0 for t in _tiles(N, knobs, swiglu, quant))
    assert (N // KN.pick_lanes(N, knobs["decode"].lanes)) % P == 0


@pytest.mark.parametrize("family", ["avx512", "avx2", "arm"])
def test_float32_weights_stay_panel_after_panel(family):
    """Float32 weights are never interleaved (measured no faster, BENCHMARKS.md); on AVX-512 their decode GEMV
    takes 4 columns where 16-bit ones take 8 (two interleave groups)."""
    knobs = _knobs(family)
    for N, swiglu in ((1024, False), (3072, False), (4608, True), (65536, False)):
        assert KN.gemv_panels(N, knobs, None, swiglu, head=True) == 1
    if family == "avx512":
        dec = knobs["decode"]
        assert KN.matmul_cols(4608, 16, dec, False, None) == 4
        assert KN.matmul_cols(4608, 16, dec, False, "f16") == 2 * KN.gemv_panels(4608, knobs, ("f16",))


def test_avx2_interleaves_heads_and_16bit_only():
    """AVX2's 3-column prefill tile shares no divisor with its 8-column GEMV: only LM heads and 16-bit
    projections (not SwiGLU pairs) take the decode's interleave, read by the prefill in K blocks."""
    knobs = _knobs("avx2")
    assert KN.gemv_panels(3072, knobs, ("q8",)) == 1                    # an int8 projection
    assert KN.gemv_panels(1024, knobs, ("q8",)) == 2                    # 128 panels: the prefill tile takes 2
    assert KN.gemv_panels(3072, knobs, ("q8",), head=True) == 6         # 384 panels of 8: a multiple of 3, <= 8
    assert KN.gemv_panels(3072, knobs, ("f16",), head=True) == 6
    assert KN.gemv_panels(4608, knobs, ("f16",), swiglu=True, head=True) == 1


@pytest.mark.parametrize("quant", [("q4", 32, False), ("q8", 32)])
def test_grouped_codes_and_gpus_keep_panel_after_panel(quant):
    assert KN.gemv_panels(1024, _knobs("avx512"), quant, head=True) == 1
    assert KN.gemv_panels(1024, KN.gpu_knobs(), ("f16",), head=True) == 1
