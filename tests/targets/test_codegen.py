"""Every target profile compiles the tiny model, and what it emits is code for that target: Metal source with
`kernel void` and threadgroups within the profile, OpenCL `__kernel`s, CUDA that nvcc accepts for the profile's
architecture, AMDGPU code objects for the right gfx, AArch64 ELF / arm64 Mach-O objects. Unknown or missing
toolchains fail with a message that says what is missing."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess

import numpy as np
import pytest

from lfmc.compile import compile_model
from lfmc.frontend import import_preset
from lfmc.ir import LfmcError
from lfmc.runtime.drivers.launch import LaunchSpec
from lfmc.targets.profiles import PRESETS, Profile, get_profile, guard_toolchain, load_toml


@pytest.fixture(scope="module")
def tiny():
    return import_preset("lfm2-tiny", weights=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("codegen")
    cache = {}

    def get(target):
        if target not in cache:
            cache[target] = compile_model(tiny, root / target.replace(":", "-"), target=target, max_batch=2,
                                          max_context=64, prefill_chunk=16)
        return cache[target]
    return get


def _launch_sizes(lib, n_values=(1, 16)):
    """(grid, block) of every launch for a few row counts (n), with the other shape names at small values."""
    out = []
    for name, spec in lib["table"].items():
        ls = LaunchSpec(name, spec)
        for n in n_values:
            env = {k: n for k in ls.shape_vars} | {k: 1 for k in ls.scalars} | {"S": 2, "C": 64}
            for _, _, grid, block in ls.launches:
                out.append(([g(env) for g in grid], [b(env) for b in block]))
    return out


@pytest.mark.parametrize("target", ["apple-m2", "apple-m4", "iphone"])
def test_metal_source(target, built):
    art = built(target)
    src = (art / "kernels" / "device.metal").read_text()
    lib = json.loads((art / "kernels" / "device.json").read_text())
    assert lib["api"] == "metal" and "kernel void" in src and "#include <metal_stdlib>" in src
    assert "__kernel" not in src and "__global__" not in src
    prof = PRESETS[target]
    for grid, block in _launch_sizes(lib):
        threads = block[0] * block[1] * block[2]
        assert 1 <= threads <= min(prof.max_threads, 1024), (target, block)


@pytest.mark.parametrize("target", ["snapdragon-8gen3", "snapdragon-8elite"])
def test_opencl_source(target, built):
    lib = json.loads((built(target) / "kernels" / "device.json").read_text())
    assert lib["api"] == "opencl" and "__kernel void" in lib["source"]
    for _, block in _launch_sizes(lib):
        assert block[0] * block[1] * block[2] <= PRESETS[target].max_threads


@pytest.mark.parametrize("target", ["nvidia-h100", "nvidia-h200"])
def test_cuda_source_compiles_with_nvcc(target, built, tmp_path):
    lib = json.loads((built(target) / "kernels" / "device.json").read_text())
    assert lib["api"] == "cuda" and '__global__' in lib["source"]
    nvcc = shutil.which("nvcc") or shutil.which("/usr/local/cuda/bin/nvcc")
    if nvcc is None:
        pytest.skip("nvcc not installed")
    cu = tmp_path / "k.cu"
    cu.write_text(lib["source"])
    r = subprocess.run([nvcc, "-ptx", "-arch=sm_90a", "-o", str(tmp_path / "k.ptx"), str(cu)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert ".target sm_90a" in (tmp_path / "k.ptx").read_text()


@pytest.mark.parametrize("target,gfx", [("amd-mi300x", "gfx942"), ("amd-rdna3", "gfx1100")])
def test_rocm_code_object(target, gfx, built):
    if not shutil.which("ld.lld-22") and not shutil.which("ld.lld"):
        pytest.skip("lld-22 not installed")
    art = built(target)
    hsaco = (art / "kernels" / "device.hsaco").read_bytes()
    assert hsaco[:4] == b"\x7fELF"
    assert struct.unpack_from("<H", hsaco, 18)[0] == 224            # EM_AMDGPU
    assert gfx.encode() in hsaco
    lib = json.loads((art / "kernels" / "device.json").read_text())
    assert f'.amdgcn_target "amdgcn-amd-amdhsa-hcc-{gfx}"' in lib["source"]


@pytest.mark.parametrize("target", ["snapdragon-8gen3:cpu", "snapdragon-8elite:cpu"])
def test_aarch64_linux_libraries(target, built):
    if not shutil.which("aarch64-linux-gnu-g++"):
        pytest.skip("g++-aarch64-linux-gnu not installed")
    art = built(target)
    libs = sorted((art / "kernels").glob("*.so"))
    assert libs
    for so in libs:
        b = so.read_bytes()
        assert b[:4] == b"\x7fELF" and struct.unpack_from("<H", b, 18)[0] == 183     # EM_AARCH64
    man = json.loads((art / "manifest.json").read_text())
    assert man["target"]["features"]["arch"] == "aarch64"
    from lfmc.runtime import Engine, RuntimeLoadError

    with pytest.raises(RuntimeLoadError, match="compiled for aarch64 CPUs"):
        Engine(art)                                                  # refused on this x86 machine


def _this_cpu_has(flag: str) -> bool:
    with open("/proc/cpuinfo") as f:
        return any(line.startswith("flags") and flag in line.split() for line in f)


def test_x86_64_v3_runs_here_and_follows_the_interpreter(tiny, tmp_path):
    """A build for another x86 machine at the AVX2 level: this CPU has its features, so it loads and runs, and
    its numbers are the interpreter's (prefill, then decode)."""
    if not _this_cpu_has("avx2"):
        pytest.skip("this CPU has no AVX2")
    from lfmc.ir.interp import Interpreter
    from lfmc.runtime import Engine
    from tests.helpers import assert_follows_interpreter

    m = import_preset("lfm2-tiny", weights=True, seed=2, std=0.25)
    art = compile_model(m, tmp_path / "v3", target="x86-64-v3", max_batch=1, max_context=64, prefill_chunk=8)
    man = json.loads((art / "manifest.json").read_text())
    f = man["target"]["features"]
    assert man["target"]["name"] == "x86-64-v3" and f["mcpu"] == "x86-64-v3"
    assert f["avx2"] and f["fma"] and not f["avx512"]
    it, eng = Interpreter(m.graph, m.weights), Engine(art)
    assert_follows_interpreter(it, eng, [1, 5, 9, 200, 3, 7, 7, 30, 2, 11], steps=4)


@pytest.mark.parametrize("target", ["x86-64-v4", pytest.param("xeon-sapphirerapids", marks=pytest.mark.slow)])
def test_avx512_builds_are_avx512_code_and_refused_without_it(target, built):
    """AVX-512 profiles emit zmm code (16-lane panels); a CPU without AVX-512 refuses the artifact by name
    instead of dying of SIGILL; one with it runs it."""
    art = built(target)
    man = json.loads((art / "manifest.json").read_text())
    assert man["target"]["features"]["avx512"] and man["plan"]["params"]
    assert man["target"]["features"]["amx"] == (target == "xeon-sapphirerapids")
    mm = next((art / "kernels").glob("k_mm_*.so"))
    asm = subprocess.run(["objdump", "-d", str(mm)], capture_output=True, text=True, check=True).stdout
    assert "%zmm" in asm and "vfmadd" in asm
    from lfmc.runtime import Engine, RuntimeLoadError

    # Sapphire Rapids code may use AVX512-FP16 (vmovw in the bf16 embedding), which a Zen 4 lacks
    lacks = [f for f in ("avx512f", "avx512_fp16")[:2 if target == "xeon-sapphirerapids" else 1]
             if not _this_cpu_has(f)]
    if not lacks:
        s = (eng := Engine(art)).new_sequence()
        assert np.isfinite(eng.prefill(s, [1, 2, 3])).all()
    else:
        with pytest.raises(RuntimeLoadError, match=lacks[0].upper()):
            Engine(art)


def test_vnni_artifacts_are_refused_by_name_without_vnni(monkeypatch):
    """An artifact whose int8 kernels use vpdpbusd (the manifest records AVX512-VNNI or AVX-VNNI) is refused on a
    CPU without it, naming the feature, instead of dying of SIGILL; the x86 profiles say which have it."""
    import platform

    from lfmc.runtime import RuntimeLoadError
    from lfmc.runtime.drivers import cpu
    from lfmc.targets.host import host_knobs, x86_features
    from lfmc.targets.profiles import get_profile

    base = {"arch": platform.machine(), "mcpu": "sapphirerapids", "avx2": True, "fma": True}
    monkeypatch.setattr(cpu, "_cpu_flags", lambda: {"avx2", "fma"})
    for key, flag in (("avx512_vnni", "AVX512_VNNI"), ("avxvnni", "AVX_VNNI")):
        with pytest.raises(RuntimeLoadError, match=f"CPUs with {flag} .*this CPU lacks it"):
            cpu.check_artifact({"target": {"features": {**base, key: True}}})
    cpu.check_artifact({"target": {"features": base}})                 # without: loads
    spr, v3 = x86_features(get_profile("xeon-sapphirerapids")), x86_features(get_profile("x86-64-v3"))
    assert spr["avx512_vnni"] and not v3["avx512_vnni"] and not v3["avxvnni"]
    assert host_knobs("decode", spr).dot == "vnni" and host_knobs("prefill", v3).dot == "avx2"


def test_isa_variants_give_every_optional_kernel_a_fallback():
    """Kernels that use an optional feature the target has (VNNI int8 kernels, AVX512-BF16 bf16 kernels) get a
    twin of the family that does without, with the same arguments; the others are left alone."""
    import dataclasses

    from lfmc.targets import knobs as KN
    from lfmc.targets.host import OPTIONAL
    from lfmc.targets.lower import KernelSpec

    kn = KN.Knobs(16, 4, 3, dot="vnni", a8_cols=6, bf16dot="avx512bf16")
    kernels = {"a8": KernelSpec("make_matmul_a8", {"N": 64, "K": 64, "knobs": kn}),
               "bf": KernelSpec("make_matmul_bf16", {"N": 64, "K": 64, "knobs": kn}),
               "f32": KernelSpec("make_matmul", {"N": 64, "K": 64, "knobs": kn})}
    feats = {"avx2": True, "avx512": True, "avx512_vnni": True, "avxvnni": False, "avx512_bf16": True}
    v = OPTIONAL.variants(kernels, feats)
    assert v == {"a8": {"needs": ["avx512_vnni"], "fallback": "a8__avx2"},
                 "bf": {"needs": ["avx512_bf16"], "fallback": "bf__fma"}}
    assert kernels["a8__avx2"].knobs == dataclasses.replace(kn, dot="avx2", a8_cols=3) and not kernels["a8__avx2"].needs
    assert kernels["bf__fma"].knobs.bf16dot == "fma" and kernels["bf"].needs == ("avx512_bf16",)
    assert "f32__avx2" not in kernels and not kernels["f32"].needs
    assert OPTIONAL.variants(dict(kernels), {**feats, "avx512_vnni": False, "avx512_bf16": False}) == {}
    assert OPTIONAL.base_features(feats) == {**feats, "avx512_vnni": False, "avx512_bf16": False}


def test_amx_kernels_fall_back_to_vnni_then_avx2():
    """A Sapphire Rapids profile's prefill multiplies AMX tiles (int8 and bf16; decode GEMVs stay VNNI /
    vdpbf16ps): each AMX kernel gets a chain of fallbacks (AMX -> VNNI -> AVX2, AMX -> AVX512-BF16 -> FMA), and the
    runtime picks down the chain by the CPU's flags (AMX tile state requested from Linux first)."""
    from lfmc.runtime.drivers import cpu
    from lfmc.targets.host import OPTIONAL, host_knobs, x86_features
    from lfmc.targets.lower import KernelSpec
    from lfmc.targets.profiles import get_profile

    spr = x86_features(get_profile("xeon-sapphirerapids"))
    assert spr["amx"] and spr["amx_int8"] and spr["amx_bf16"]
    pre, dec = host_knobs("prefill", spr), host_knobs("decode", spr)
    assert (pre.dot, pre.bf16dot, dec.dot, dec.bf16dot) == ("amx", "amx", "vnni", "avx512bf16")
    kernels = {"a8": KernelSpec("make_matmul_a8", {"N": 64, "K": 64, "knobs": pre}),
               "bf": KernelSpec("make_matmul_bf16", {"N": 64, "K": 64, "knobs": pre})}
    v = OPTIONAL.variants(kernels, spr)
    assert v == {"a8": {"needs": ["amx", "amx_int8", "avx512_vnni"], "fallback": "a8__vnni"},
                 "a8__vnni": {"needs": ["avx512_vnni", "avxvnni"], "fallback": "a8__avx2"},
                 "bf": {"needs": ["amx", "amx_bf16", "avx512_bf16"], "fallback": "bf__avx512bf16"},
                 "bf__avx512bf16": {"needs": ["avx512_bf16"], "fallback": "bf__fma"}}
    assert [kernels[k].knobs.dot for k in ("a8", "a8__vnni", "a8__avx2")] == ["amx", "vnni", "avx2"]
    assert [kernels[k].knobs.bf16dot for k in ("bf", "bf__avx512bf16", "bf__fma")] == ["amx", "avx512bf16", "fma"]
    man = {"target": {"isa_variants": v}}
    every = {"avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}
    for flags, granted, want in [(every, True, ("a8", "bf")), (every, False, ("a8__vnni", "bf__avx512bf16")),
                                 (every - {"amx_tile", "amx_int8", "amx_bf16"}, True, ("a8__vnni", "bf__avx512bf16")),
                                 ({"avx512f", "avx512_vnni", "avx_vnni"}, True, ("a8__vnni", "bf__fma")),
                                 ({"avx512f"}, True, ("a8__avx2", "bf__fma")), (None, True, ("a8__avx2", "bf__fma"))]:
        pick = _with(cpu, _cpu_flags=lambda f=flags: f, _request_amx=lambda g=granted: g)(cpu.pick_kernels)(man)
        assert (pick["a8"], pick["bf"]) == want, (flags, granted)


@pytest.mark.parametrize("opts,instr", [pytest.param({"quant": "q8", "act_quant": "i8"}, "tdpbusd",
                                                     marks=pytest.mark.slow),
                                        pytest.param({"dtype": "bf16", "act_quant": "bf16"}, "tdpbf16ps",
                                                     marks=pytest.mark.slow)])
def test_amx_artifacts_carry_tile_kernels_and_run_their_fallbacks(opts, instr, tmp_path):
    """A W8A8 / bf16 build for Sapphire Rapids: its prefill matmuls are AMX kernels (the instruction in their
    libraries), each with its chain of fallbacks in the manifest; this CPU lacks the rest of Sapphire Rapids
    (AVX512-FP16 here) and refuses it by name. Built again for this CPU with AMX added (a user profile with
    ``mattr``), the artifact loads here: the runtime runs the fallbacks this CPU's flags allow, and the logits
    equal those of the build for this CPU, bit for bit (the same integer sums on int8 weights paired for the tiles;
    the same float32 sums of exact bf16 products on K padded to 32)."""
    from lfmc.runtime import Engine, RuntimeLoadError
    from lfmc.targets.host import cpu_features

    m = import_preset("lfm2-tiny", weights=True, seed=3)
    kw = dict(max_batch=1, max_context=64, prefill_chunk=16, **opts)
    art = compile_model(m, tmp_path / "spr", target="xeon-sapphirerapids", **kw)
    man = json.loads((art / "manifest.json").read_text())
    v = man["target"]["isa_variants"]
    amx = [k for k, x in v.items() if x["needs"][:1] == ["amx"]]
    assert amx and all(v[k]["fallback"] in v for k in amx)             # AMX -> VNNI / vdpbf16ps -> ...
    assert not man["target"]["features"]["amx"] and man["target"]["features"]["avx512_fp16"]
    asm = subprocess.run(["objdump", "-d", str(art / man["kernels"][amx[0]])], capture_output=True, text=True,
                         check=True).stdout
    assert instr in asm and "tileloadd" in asm
    if not _this_cpu_has("avx512f") or cpu_features()["arch"] != "x86_64":
        pytest.skip("this CPU has no AVX-512: the artifact is checked, not run")
    if not _this_cpu_has("avx512_fp16"):
        with pytest.raises(RuntimeLoadError, match="AVX512_FP16"):
            Engine(art)
    prof = tmp_path / "amx.toml"
    prof.write_text(f'[here-amx]\nbase = "x86-64-v4"\nmcpu = "{cpu_features()["mcpu"]}"\n'
                    'mattr = ["+amx-tile", "+amx-int8", "+amx-bf16"]\n')
    here = compile_model(m, tmp_path / "here-amx", target="here-amx", profiles=prof, **kw)
    tiles = {k for k, x in json.loads((here / "manifest.json").read_text())["target"]["isa_variants"].items()
             if x["needs"][:1] == ["amx"]}
    assert tiles

    def run(eng):
        s = eng.new_sequence()
        return np.concatenate([eng.prefill(s, list(range(3, 40)))] + [eng.decode([s], [t])[0] for t in (5, 6, 7)])

    eng = Engine(here)
    assert not tiles & set(eng._impl.values()) or _this_cpu_has("amx_tile")
    np.testing.assert_array_equal(run(eng), run(Engine(compile_model(m, tmp_path / "host", **kw))))


def _with(mod, **attrs):
    """``fn`` called with ``mod``'s attributes replaced by ``attrs`` (restored after)."""
    def wrap(fn):
        def call(*a):
            old = {k: getattr(mod, k) for k in attrs}
            try:
                for k, v in attrs.items():
                    setattr(mod, k, v)
                return fn(*a)
            finally:
                for k, v in old.items():
                    setattr(mod, k, v)
        return call
    return wrap


@pytest.mark.parametrize("opts", [{"quant": "q4g32", "act_quant": "i8"}, {"dtype": "bf16", "act_quant": "bf16"}])
def test_isa_variants_picked_at_load_by_the_cpus_features(opts, tmp_path, monkeypatch):
    """An artifact built on a CPU with VNNI / AVX512-BF16 loads on one without them (told by its flags): the
    runtime runs the fallback variants, with the same logits bit for bit (the same integer sums; the same float32
    sums of exact bf16 products), instead of refusing the artifact."""
    from lfmc.runtime import Engine
    from lfmc.runtime.drivers import cpu
    from lfmc.targets.host import cpu_features

    m = import_preset("lfm2-tiny", weights=True, seed=1)
    art = compile_model(m, tmp_path / "a", max_batch=2, max_context=64, prefill_chunk=16, **opts)
    man = json.loads((art / "manifest.json").read_text())
    need = "avx512_vnni" if "i8" in opts.values() else "avx512_bf16"
    if not cpu_features().get(need):
        assert not man["target"].get("isa_variants")
        pytest.skip(f"this CPU has no {need}: the artifact has one variant per kernel")
    v = man["target"]["isa_variants"]
    assert v and all(x["fallback"] in man["kernels"] for x in v.values()) and not man["target"]["features"][need]

    def run(eng):
        s = eng.new_sequence()
        return np.concatenate([eng.prefill(s, list(range(3, 22)))] + [eng.decode([s], [t])[0] for t in (5, 6, 7)])

    best = Engine(art)
    assert set(best._impl.values()) == set(v)
    real = cpu._cpu_flags()
    monkeypatch.setattr(cpu, "_cpu_flags", lambda: real - {"avx512_vnni", "avx_vnni", "avx512_bf16"})
    plain = Engine(art)
    assert set(plain._impl.values()) == {x["fallback"] for x in v.values()}
    np.testing.assert_array_equal(run(plain), run(best))


@pytest.mark.parametrize("target", ["apple-m2:cpu", "apple-m4:cpu"])
def test_macos_dylibs(target, built):
    if not shutil.which("ld64.lld-22") and not shutil.which("ld64.lld"):
        pytest.skip("lld-22 not installed")
    libs = sorted((built(target) / "kernels").glob("*.dylib"))
    assert libs
    for d in libs:
        magic, cputype, _, filetype = struct.unpack_from("<IiiI", d.read_bytes(), 0)
        assert magic == 0xFEEDFACF and cputype == 0x0100000C and filetype == 6      # MH_DYLIB, arm64


def test_ios_static_library(built):
    a = (built("iphone:cpu") / "kernels" / "lfmc_kernels.a").read_bytes()
    assert a.startswith(b"!<arch>\n")
    i = a.index(b"\xcf\xfa\xed\xfe")                                  # a Mach-O 64 object inside
    magic, cputype = struct.unpack_from("<Ii", a, i)
    assert cputype == 0x0100000C


def test_profiles_and_user_toml(tmp_path, tiny):
    need = {"apple-m2", "apple-m4", "iphone", "snapdragon-8gen3", "snapdragon-8elite", "amd-mi300x", "amd-rdna3",
            "nvidia-h100", "nvidia-h200", "host"}
    assert need <= set(PRESETS)
    for p in PRESETS.values():
        guard_toolchain(p)
        if p.family == "wafer":
            with pytest.raises(LfmcError, match="no TVM target"):
                p.target()
        else:
            assert p.target() is not None
    assert PRESETS["apple-m2"].tag == "apple/m2-gpu" and PRESETS["apple-m4"].tag is None
    f = tmp_path / "boards.toml"
    f.write_text('[mali-board]\nfamily = "opencl"\ndevice = "mali"\nmemory_gb = 8\nbandwidth_gbs = 51\n'
                 'weight_budget_gb = 3\n[bad]\nfamily = "tpu"\n')
    with pytest.raises(LfmcError, match=r"\[bad\] family must be one of"):
        load_toml(f)
    f.write_text('[mali-board]\nfamily = "opencl"\ndevice = "mali"\nmemory_gb = 8\nbandwidth_gbs = 51\n'
                 'weight_budget_gb = 3\n')
    p = get_profile("mali-board", f)
    assert p.family == "opencl" and p.tvm["device"] == "mali" and p.memory_gb == 8
    art = compile_model(tiny, tmp_path / "mali", target="mali-board", profiles=f, max_batch=1, max_context=32)
    assert json.loads((art / "manifest.json").read_text())["target"]["name"] == "mali-board"
    f.write_text('[x]\nfamily = "opencl"\nspeed = 3\n')
    with pytest.raises(LfmcError, match="unknown keys"):
        load_toml(f)
    with pytest.raises(LfmcError, match="unknown target 'nope'"):
        get_profile("nope")


def test_missing_toolchains_are_named():
    with pytest.raises(LfmcError, match="hexagon code generator is not in this TVM build"):
        guard_toolchain(Profile("dsp", "cpu", tvm={"kind": "hexagon"}))
    with pytest.raises(LfmcError, match="vulkan"):
        guard_toolchain(Profile("vk", "opencl", tvm={"kind": "vulkan"}))


def test_gpu_artifact_params_regenerate_without_tvm_or_torch(tmp_path):
    """A GPU artifact travels without its weights (a lent GPU gets the kernels and plan) and rebuilds them from
    the manifest with numpy alone: byte-identical to what the compile wrote (the manifest's sha256)."""
    import hashlib
    import sys
    import textwrap

    m = import_preset("lfm2-moe-tiny", weights=True, seed=4, std=0.25)
    art = compile_model(m, tmp_path / "a", target="nvidia-h200", max_batch=1, max_context=32, quant="q4g32")
    want = json.loads((art / "manifest.json").read_text())["files"]["params.safetensors"]
    (art / "params.safetensors").unlink()
    code = textwrap.dedent(f"""
        import sys
        sys.modules["tvm"] = None; sys.modules["torch"] = None     # neither may be needed
        from lfmc.compile import regenerate_params
        regenerate_params({str(art)!r})
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert hashlib.sha256((art / "params.safetensors").read_bytes()).hexdigest() == want


@pytest.mark.parametrize("target", ["nvidia-h200", "snapdragon-8gen3", "apple-m2", "amd-rdna3"])
def test_gpu_matmuls_are_single_gemv_kernels(target, built):
    """GPU pipelines keep the input norm a kernel of its own, so every projection (float, q8, q4 dequantized per
    element) is one reduction that dlight schedules as one kernel with no global temporaries."""
    art = built(target)
    man = json.loads((art / "manifest.json").read_text())
    assert "fuse-norm" not in man["passes"] and "fuse-rope" in man["passes"]
    lib = json.loads((art / "kernels" / "device.json").read_text())
    mms = {k: v for k, v in lib["table"].items() if k.startswith("k_mm")}
    assert mms and all(len(v["launches"]) == 1 and not v["temps"] for v in mms.values()), \
        {k: len(v["launches"]) for k, v in mms.items()}


def test_device_cache_hit_equals_cold_build(tmp_path, tiny, monkeypatch):
    """A second compile takes the device module from the cache (by content hash) and writes the same kernels."""
    import os

    monkeypatch.setenv("LFMC_CACHE", str(tmp_path / "cache"))
    a = compile_model(tiny, tmp_path / "a", target="apple-m2", max_batch=1, max_context=32)
    assert len(os.listdir(tmp_path / "cache" / "device")) == 1
    b = compile_model(tiny, tmp_path / "b", target="apple-m2", max_batch=1, max_context=32)
    assert (a / "kernels" / "device.json").read_bytes() == (b / "kernels" / "device.json").read_bytes()
    assert len(os.listdir(tmp_path / "cache" / "device")) == 1


@pytest.mark.parametrize("target", ["apple-m2", "nvidia-h100", pytest.param("amd-rdna3", marks=pytest.mark.slow)])
def test_lfm3_device_code(target, tmp_path):
    """LFM3's sliding-window, gated attention as device code: the kernels carry the variant, the launches fit the
    device, the plan's ring state is sized at load (dimension R with its window)."""
    m = import_preset("lfm3-tiny", weights=True)
    art = compile_model(m, tmp_path / target, target=target, max_batch=2, max_context=64, prefill_chunk=16)
    man = json.loads((art / "manifest.json").read_text())
    lib = json.loads((art / "kernels" / "device.json").read_text())
    names = set(lib["table"])
    assert any("window8" in k and "gated1" in k for k in names), sorted(names)
    assert any("gated1" in k and "window" not in k for k in names)          # the full-attention layer
    rings = [s for s in man["plan"]["state"].values() if "window" in s]
    assert rings and all(s["window"] == 8 and s["shape"][1] == "R" for s in rings)
    limit = PRESETS[target].tvm.get("max_threads_per_block", PRESETS[target].max_threads)
    for grid, block in _launch_sizes(lib):
        assert 1 <= block[0] * block[1] * block[2] <= limit
