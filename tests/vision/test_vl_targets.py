"""A VL artifact for every GPU family and an Arm CPU: the vision entry's kernels (LayerNorm, GELU, encoder
attention, the unshuffle gather, the image merge) are in the generated code, which is code for that target:
CUDA that nvcc accepts for sm_90a, an AMDGPU code object, Metal source, AArch64 objects. (Their numerics run
through the same TensorIR schedules on the opencl driver over PoCL: tests/vision/test_lfm2_vl.py.)"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess

import pytest

from lfmc.compile import compile_model
from lfmc.frontend import import_preset

VISION_KERNELS = ("enc_qkv", "attn", "gather_rows", "gelu", "layernorm", "image_merge")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    m = import_preset("lfm2-vl-tiny", weights=True, seed=2)
    root = tmp_path_factory.mktemp("vl-targets")
    cache = {}

    def get(target):
        if target not in cache:
            cache[target] = compile_model(m, root / target.replace(":", "-"), target=target, max_batch=2,
                                          max_context=2048, prefill_chunk=64)
        return cache[target]
    return get


def _vision(art) -> tuple[dict, set[str]]:
    man = json.loads((art / "manifest.json").read_text())
    used = {L["kernel"] for e in ("vision", "prefill") for L in man["plan"]["entries"][e]}
    assert all(any(k in u for u in used) for k in VISION_KERNELS), sorted(used)
    assert man["plan"]["vision"]["max_patches"] == 1024 and man["processor"]["tile_size"] == 512
    return man, used


@pytest.mark.parametrize("target,api", [("nvidia-h100", "cuda"), ("amd-rdna3", "rocm"), ("apple-m2", "metal")])
def test_gpu_families(built, target, api, tmp_path):
    if api == "rocm" and not (shutil.which("ld.lld-22") or shutil.which("ld.lld")):
        pytest.skip("lld-22 not installed")
    art = built(target)
    _, used = _vision(art)
    lib = json.loads((art / "kernels" / "device.json").read_text())
    assert lib["api"] == api and used <= set(lib["table"])
    for k in used:
        assert k in lib["source"], k
    if api == "cuda":
        nvcc = shutil.which("nvcc") or shutil.which("/usr/local/cuda/bin/nvcc")
        if nvcc is None:
            pytest.skip("nvcc not installed")
        (tmp_path / "k.cu").write_text(lib["source"])
        r = subprocess.run([nvcc, "-ptx", "-arch=sm_90a", "-o", str(tmp_path / "k.ptx"), str(tmp_path / "k.cu")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    if api == "rocm":
        hsaco = (art / "kernels" / "device.hsaco").read_bytes()
        assert hsaco[:4] == b"\x7fELF" and struct.unpack_from("<H", hsaco, 18)[0] == 224
    if api == "metal":
        assert "kernel void" in (art / "kernels" / "device.metal").read_text()


def test_arm_cpu(built):
    if not shutil.which("aarch64-linux-gnu-g++"):
        pytest.skip("g++-aarch64-linux-gnu not installed")
    art = built("snapdragon-8gen3:cpu")
    _vision(art)
    for so in sorted((art / "kernels").glob("*.so")):
        b = so.read_bytes()
        assert b[:4] == b"\x7fELF" and struct.unpack_from("<H", b, 18)[0] == 183


def test_wafer_refuses_clearly(tmp_path):
    m = import_preset("lfm2-vl-tiny", weights=True)
    with pytest.raises(Exception, match="wafer target does not run vision encoders"):
        compile_model(m, tmp_path / "w", target="wafer-tiny")
