"""lfmc/targets/llvm_ir.py on LLVM IR text: the AMX stand-ins become tile casts around the intrinsic with the tile
shapes their vector widths give (the kernels' compiled code is checked in tests/targets/test_kernels.py)."""
from __future__ import annotations

import pytest

from lfmc.targets.llvm_ir import AMX_BF16, AMX_INT8, substitute


def test_amx_stand_ins_become_tile_intrinsics_with_their_shapes():
    ll = (f"  %5 = tail call <64 x i32> @{AMX_INT8}(<64 x i32> %1, <128 x i8> %2, <512 x i8> %3)\n"
          f"  %9 = call <128 x float> @{AMX_BF16}(<128 x float> %6, <512 x i8> %7, <1024 x i8> %8)\n"
          f"declare <64 x i32> @{AMX_INT8}(<64 x i32>, <128 x i8>, <512 x i8>)\n"
          f"declare <128 x float> @{AMX_BF16}(<128 x float>, <512 x i8>, <1024 x i8>)\n")
    out = substitute(ll)
    assert AMX_INT8 not in out and AMX_BF16 not in out
    # 4 rows x 16 int32 += (4 x 32 bytes) . (8 x 64 bytes); 8 rows x 16 float += (8 x 64 bytes) . (16 x 64 bytes)
    assert "@llvm.x86.tdpbusd.internal(i16 4, i16 64, i16 32, x86_amx %lfmc.amx0.c," in out
    assert "@llvm.x86.tdpbf16ps.internal(i16 8, i16 64, i16 64, x86_amx %lfmc.amx1.c," in out
    assert "%5 = call <64 x i32> @llvm.x86.cast.tile.to.vector.v64i32(x86_amx %lfmc.amx0.r)" in out
    assert "%9 = call <128 x float> @llvm.x86.cast.tile.to.vector.v128f32(x86_amx %lfmc.amx1.r)" in out
    for decl in ("declare x86_amx @llvm.x86.cast.vector.to.tile.v128i8(<128 x i8>)",
                 "declare x86_amx @llvm.x86.cast.vector.to.tile.v1024i8(<1024 x i8>)",
                 "declare x86_amx @llvm.x86.tdpbusd.internal(i16, i16, i16, x86_amx, x86_amx, x86_amx)"):
        assert out.count(decl) == 1


def test_amx_stand_in_with_mismatched_tiles_is_refused():
    ll = f"  %5 = tail call <64 x i32> @{AMX_INT8}(<64 x i32> %1, <128 x i8> %2, <256 x i8> %3)\n"
    with pytest.raises(ValueError, match="does not match a 4 x 32-byte activation tile"):
        substitute(ll)
