"""Wafer placement: SRAM never over a PE's capacity, roles inside the mesh and disjoint, KV strips sized for
the slots and context, clear errors for models that do not fit and for what the wafer does not run."""
from __future__ import annotations

import numpy as np
import pytest

from lfmc.frontend import import_source
from lfmc.ir.errors import LfmcError
from lfmc.passes import run_pipeline
from lfmc.targets.backend import backend_named
from lfmc.targets.profiles import get_profile
from lfmc.targets.wafer import lower_wafer
from lfmc.targets.wafer.place import CODE_BYTES, Grid, KVStrip, pe_bytes


def _check_placement(pl) -> None:
    m = pl.machine
    assert pl.sram.shape == (m.height, m.width)
    assert pl.sram.max() <= m.sram_bytes
    again = np.zeros_like(pl.sram)
    for i, r in enumerate(pl.roles):
        assert 0 <= r.x and r.x + r.w <= m.width and 0 <= r.y and r.y + r.h <= m.height, r.name
        assert (pl.owner[r.y:r.y + r.h, r.x:r.x + r.w] == i).all(), f"{r.name} overlaps another role"
        if isinstance(r, Grid):
            b = pe_bytes(r)
            assert (b <= m.sram_bytes).all()
            # every weight of the matrix is on exactly one PE
            assert int((r.tile_rows()[:, None] * r.tile_cols()[None, :]).sum()) == r.N * r.K
            again[r.y:r.y + r.h, r.x:r.x + r.w] += b
        else:
            assert r.blocks * r.b >= r.context and r.m * r.w >= r.blocks
            again[r.y:r.y + r.h, r.x:r.x + r.w] += r.per_pe_bytes() + CODE_BYTES
    assert (again == pl.sram).all()
    assert (pl.owner >= 0).sum() == sum(r.w * r.h for r in pl.roles)


def _place(source: str, target: str, batch: int = 2, ctx: int = 64, kv: str = "f32"):
    m = run_pipeline(import_source(source), None, {}, without=backend_named("wafer").without_passes)
    return lower_wafer(m.graph, None, get_profile(target), batch, ctx, kv)


@pytest.mark.parametrize("source,target,batch,ctx", [
    ("lfm2-tiny", "wafer-tiny", 2, 64), ("lfm2-moe-tiny", "wafer-small", 4, 256),
    ("lfm2-hybrid-tiny", "wafer-small", 2, 128), ("lfm2-350m", "wafer-wse2", 8, 4096),
    ("lfm2-1.2b", "wafer-wse2", 8, 4096), ("lfm2-1.2b", "wafer-wse3", 16, 8192),
])
def test_placement_fits_sram(source, target, batch, ctx):
    prog, params, pl = _place(source, target, batch, ctx)
    _check_placement(pl)
    assert params == {} and prog["param_order"] == []
    s = pl.summary()
    assert s["max_pe_bytes"] <= s["pe_capacity"] and 0 < s["sram_utilization"] < 1
    kv = [r for r in pl.roles if isinstance(r, KVStrip)]
    assert all(r.slots == batch and r.context == ctx for r in kv)


def test_kv_f16_halves_the_strip():
    _, _, a = _place("lfm2-350m", "wafer-wse2", 8, 4096, "f32")
    _, _, b = _place("lfm2-350m", "wafer-wse2", 8, 4096, "f16")
    ka = sum(r.per_pe_bytes() * r.w * r.h for r in a.roles if isinstance(r, KVStrip))
    kb = sum(r.per_pe_bytes() * r.w * r.h for r in b.roles if isinstance(r, KVStrip))
    assert kb < 0.7 * ka


def test_model_that_does_not_fit_says_by_how_much_per_layer():
    with pytest.raises(LfmcError, match=r"does not fit wafer-tiny .*over by [\d,]+ PEs.*per layer: io: .*layer 0: .*layer 15: "):
        _place("lfm2-350m", "wafer-tiny", 1, 256)


def test_kv_cache_too_large_for_a_pe():
    with pytest.raises(LfmcError, match="one cached position of 100000 sequence slots"):
        _place("lfm2-tiny", "wafer-small", 100000, 64)


def test_quantized_weights_are_refused(tiny_models, tmp_path):
    from lfmc.compile import compile_model

    with pytest.raises(LfmcError, match="float32 weights"):
        compile_model(tiny_models["dense-a"], tmp_path / "a", "wafer-small", quant="q8")


def test_layout_names_every_role():
    from lfmc.targets.wafer.csl import layout

    prog, _, pl = _place("lfm2-moe-tiny", "wafer-small", 2, 64)
    text = layout(prog)
    for r in pl.roles:
        assert f"// {r.name} (" in text


def test_tuning_a_wafer_is_refused():
    from lfmc.targets.tune import make_measurer

    with pytest.raises(LfmcError, match="no kernels to tune"):
        make_measurer(get_profile("wafer-small"))
    with pytest.raises(LfmcError, match="no TVM target"):
        get_profile("wafer-wse2").target()
