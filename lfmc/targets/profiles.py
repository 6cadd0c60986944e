"""Target profiles: what lfmc knows about a device (API, TVM target, numbers for planning and cost models).

``lfmc targets`` lists them. A profile names a *family* (cpu, opencl, cuda, metal, rocm), the runtime driver
that executes its artifacts, the TVM target (a JSON dict; a TVM tag is reused where one exists and lfmc defines
the rest), and the device's numbers. Phones and Macs have a GPU and a CPU: ``NAME`` is the GPU profile and
``NAME:cpu`` the CPU one. Users add their own in a TOML file (``--profiles FILE`` or ``LFMC_PROFILES``)::

    [my-board]
    family = "opencl"
    device = "mali"            # TVM's OpenCL device key
    memory_gb = 8
    bandwidth_gbs = 51
    fp32_tflops = 1.2
    local_mem_kb = 32
    simd_width = 16
    weight_budget_gb = 3

Figures are public specifications (rounded); ``weight_budget_gb`` is what lfmc plans weights against (the rest
of memory goes to the OS, caches and activations). They feed planning and cost models, never correctness.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..ir.errors import LfmcError



def families() -> tuple[str, ...]:
    """The profile families some target backend builds (:mod:`lfmc.targets.backend`)."""
    from .backend import families as registered

    return registered()


@dataclass(frozen=True)
class Profile:
    name: str
    family: str
    description: str = ""
    tvm: dict[str, Any] = field(default_factory=dict)   # TVM target JSON (device part; host below)
    host: dict[str, Any] | None = None                   # host / CPU target for GPU families
    tag: str | None = None                               # the TVM tag it was taken from, if any
    memory_gb: float = 0.0
    bandwidth_gbs: float = 0.0
    fp32_tflops: float = 0.0
    fp16_tflops: float = 0.0
    local_mem_kb: float = 0.0                            # threadgroup / local / shared memory per block
    simd_width: int = 1                                  # warp / wavefront / SIMD-group / vector lanes (f32)
    max_threads: int = 256                               # threads per block (threadgroup / work-group) allowed
    weight_budget_gb: float = 0.0
    packaging: str = "so"                                # so | dylib | static | source | hsaco
    cpu: str | None = None                               # the companion CPU profile name
    quant: str | None = None                             # default weight quantization on this device
    # Wafer-scale meshes (family "wafer"): a mesh_width x mesh_height grid of processing elements (PEs), each with
    # pe_sram_kb of local SRAM, pe_fmacs f32 multiply-adds per cycle, pe_sram_bytes bytes of SRAM read per cycle,
    # and a router with one 32-bit word per cycle on each of its four links; clock_ghz for the cycle -> second
    # conversion; io_gbs for tokens in / logits out of the wafer.
    mesh_width: int = 0
    mesh_height: int = 0
    pe_sram_kb: float = 0.0
    pe_fmacs: float = 0.0
    pe_sram_bytes: float = 0.0
    clock_ghz: float = 0.0
    io_gbs: float = 0.0

    @property
    def driver(self) -> str:
        """The runtime driver that runs this profile's artifacts (its backend says)."""
        from .backend import backend_for

        return backend_for(self).driver_for(self)

    def target(self):
        """The TVM Target (device with its host)."""
        if self.family == "wafer":
            raise LfmcError(f"target {self.name}: a wafer has no TVM target (lfmc generates its mesh program itself)")
        import tvm

        if self.tag:                                   # TVM's own description of the device, reused
            t = tvm.target.Target(self.tag)
            if self.host is not None and self.family != "cpu" and t.host is None:
                t = t.with_host(tvm.target.Target(self.host))
            return t
        spec = dict(self.tvm)
        if self.host is not None and self.family != "cpu":
            spec["host"] = self.host
        return tvm.target.Target(spec)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        from .backend import backend_for

        be = backend_for(self)
        d["driver"] = be.driver_for(self)
        d["runs_here"] = be.runs_here(self)
        return d


_ARM_LINUX = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod", "+i8mm", "+bf16",
                                                                         "+fullfp16"]}
_ARM_ANDROID = {"kind": "llvm", "mtriple": "aarch64-linux-android", "mattr": ["+neon", "+dotprod", "+i8mm", "+bf16",
                                                                               "+fullfp16"]}


def _apple_host(mcpu: str, ios: bool = False) -> dict[str, Any]:
    return {"kind": "llvm", "mtriple": "arm64-apple-ios" if ios else "arm64-apple-macos", "mcpu": mcpu}


def _presets() -> dict[str, Profile]:
    P = Profile
    metal = lambda threads, smem: {"kind": "metal", "max_threads_per_block": 1024, "max_num_threads": threads,  # noqa: E731
                                   "thread_warp_size": 32, "max_shared_memory_per_block": smem,
                                   "max_function_args": 31}
    adreno = {"kind": "opencl", "device": "adreno", "max_num_threads": 256, "thread_warp_size": 1,
              "max_shared_memory_per_block": 32768}
    ps = [
        P("host", "cpu", "this machine's CPU (LLVM, features detected at compile time)", {"kind": "llvm"},
          simd_width=8, max_threads=1),
        P("apple-m2", "metal", "Apple M2 GPU (Metal), 8-10 cores; unified memory", metal(256, 32768),
          _apple_host("apple-m2"), "apple/m2-gpu", 16, 100, 3.6, 3.6, 32, 32, 1024, 10, "dylib", "apple-m2:cpu"),
        P("apple-m4", "metal", "Apple M4 GPU (Metal), 10 cores; unified memory (no TVM tag: defined by lfmc)",
          metal(256, 32768), _apple_host("apple-m4"), None, 16, 120, 4.3, 4.3, 32, 32, 1024, 10, "dylib",
          "apple-m4:cpu"),
        P("iphone", "metal", "iPhone 15 Pro class (A17 Pro GPU, Metal); a static library for the app",
          metal(256, 32768), _apple_host("apple-a17", ios=True), None, 8, 51, 2.1, 2.1, 32, 32, 1024, 3, "static",
          "iphone:cpu", "q4g32"),
        P("snapdragon-8gen3", "opencl", "Snapdragon 8 Gen 3 (Adreno 750, OpenCL)", adreno, _ARM_ANDROID,
          "qcom/adreno-opencl", 12, 77, 2.8, 5.6, 32, 64, 256, 4, "source", "snapdragon-8gen3:cpu", "q4g32"),
        P("snapdragon-8elite", "opencl", "Snapdragon 8 Elite (Adreno 830, OpenCL; no TVM tag: defined by lfmc)",
          adreno, _ARM_ANDROID, None, 16, 85, 3.4, 6.8, 32, 64, 256, 6, "source", "snapdragon-8elite:cpu",
          "q4g32"),
        P("amd-mi300x", "rocm", "AMD Instinct MI300X (CDNA3, gfx942), 192 GB HBM3",
          {"kind": "rocm", "mcpu": "gfx942", "mtriple": "amdgcn-amd-amdhsa-hcc", "max_num_threads": 256,
           "thread_warp_size": 64, "max_shared_memory_per_block": 65536},
          {"kind": "llvm"}, None, 192, 5300, 163, 1307, 64, 64, 256, 160, "hsaco"),
        P("amd-rdna3", "rocm", "AMD Radeon RX 7900 XTX (RDNA3, gfx1100), 24 GB",
          {"kind": "rocm", "mcpu": "gfx1100", "mtriple": "amdgcn-amd-amdhsa-hcc", "max_num_threads": 256,
           "thread_warp_size": 32, "max_shared_memory_per_block": 65536},
          {"kind": "llvm"}, None, 24, 960, 61, 123, 64, 32, 256, 20, "hsaco"),
        P("nvidia-h100", "cuda", "NVIDIA H100 SXM (sm_90a), 80 GB HBM3",
          {"kind": "cuda", "arch": "sm_90a", "max_num_threads": 1024, "thread_warp_size": 32,
           "max_shared_memory_per_block": 49152, "max_threads_per_block": 1024}, {"kind": "llvm"},
          "nvidia/nvidia-h100", 80, 3350, 67, 990, 48, 32, 256, 70, "source"),
        P("nvidia-h200", "cuda", "NVIDIA H200 (sm_90a), 141 GB HBM3e (no TVM tag: defined by lfmc)",
          {"kind": "cuda", "arch": "sm_90a", "max_num_threads": 1024, "thread_warp_size": 32,
           "max_shared_memory_per_block": 49152, "max_threads_per_block": 1024}, {"kind": "llvm"},
          None, 141, 4800, 67, 990, 48, 32, 256, 120, "source"),
    ]
    out = {p.name: p for p in ps}

    def wafer(name: str, desc: str, w: int, h: int, io: float = 150.0) -> Profile:
        # 48 KB SRAM per PE, 1 f32 FMAC per cycle, 16 bytes of SRAM read per cycle, 1.1 GHz (assumed), links of
        # one 32-bit word per cycle. Memory and bandwidth are the aggregate of the mesh.
        pes = w * h
        return P(name, "wafer", desc, {"kind": "wafer"}, memory_gb=round(pes * 48 * 1024 / 1e9, 2),
                 bandwidth_gbs=round(pes * 16 * 1.1, 1), fp32_tflops=round(pes * 2 * 1.1e-3, 3),
                 local_mem_kb=48, simd_width=1, max_threads=1,
                 weight_budget_gb=round(pes * 40 * 1024 / 1e9, 3), packaging="mesh",
                 mesh_width=w, mesh_height=h, pe_sram_kb=48, pe_fmacs=1.0, pe_sram_bytes=16.0, clock_ghz=1.1,
                 io_gbs=io)
    out.update({p.name: p for p in [
        wafer("wafer-wse2", "Cerebras WSE-2 class wafer (simulated): 750 x 994 usable PEs of 48 KB, 40 GB SRAM",
              750, 994),
        wafer("wafer-wse3", "Cerebras WSE-3 class wafer (simulated): 758 x 1172 usable PEs of 48 KB, 44 GB SRAM",
              758, 1172, 195.0),
        wafer("wafer-small", "a 64 x 64 PE mesh (simulated; tests and examples)", 64, 64, 10.0),
        wafer("wafer-tiny", "a 24 x 24 PE mesh (simulated; tests)", 24, 24, 10.0),
    ]})
    cpus = [
        P("apple-m2:cpu", "cpu", "Apple M2 CPU (arm64, NEON, dotprod, i8mm)", _apple_host("apple-m2"),
          memory_gb=16, bandwidth_gbs=100, fp32_tflops=0.4, simd_width=4, max_threads=8, weight_budget_gb=10,
          packaging="dylib"),
        P("apple-m4:cpu", "cpu", "Apple M4 CPU (arm64, NEON, dotprod, i8mm, SME)", _apple_host("apple-m4"),
          memory_gb=16, bandwidth_gbs=120, fp32_tflops=0.5, simd_width=4, max_threads=10, weight_budget_gb=10,
          packaging="dylib"),
        P("iphone:cpu", "cpu", "A17 Pro CPU (arm64)", _apple_host("apple-a17", ios=True), memory_gb=8,
          bandwidth_gbs=51, fp32_tflops=0.2, simd_width=4, max_threads=6, weight_budget_gb=3, packaging="static",
          quant="q4g32"),
        P("snapdragon-8gen3:cpu", "cpu", "Snapdragon 8 Gen 3 CPU (Cortex-X4/A720, arm64 dotprod/i8mm)",
          _ARM_LINUX, memory_gb=12, bandwidth_gbs=77, fp32_tflops=0.2, simd_width=4, max_threads=8,
          weight_budget_gb=4, quant="q4g32"),
        P("snapdragon-8elite:cpu", "cpu", "Snapdragon 8 Elite CPU (Oryon, arm64 dotprod/i8mm)", _ARM_LINUX,
          memory_gb=16, bandwidth_gbs=85, fp32_tflops=0.3, simd_width=4, max_threads=8, weight_budget_gb=6,
          quant="q4g32"),
    ]
    x86 = [   # other x86-64 machines than this one: the host's kernels for a named ISA level (see targets/host)
        P("x86-64-v3", "cpu", "any x86-64 CPU with AVX2 + FMA (x86-64-v3: Haswell, Zen 1-4 and later)",
          _x86("x86-64-v3"), memory_gb=16, bandwidth_gbs=40, fp32_tflops=0.5, simd_width=8, max_threads=8),
        P("x86-64-v4", "cpu", "any x86-64 CPU with AVX-512 (x86-64-v4: Skylake-SP, Ice Lake, Zen 4 and later)",
          _x86("x86-64-v4"), memory_gb=32, bandwidth_gbs=60, fp32_tflops=1.5, simd_width=16, max_threads=16),
        P("xeon-sapphirerapids", "cpu", "4th-generation Xeon (Sapphire Rapids: AVX-512, AMX, bf16)",
          _x86("sapphirerapids"), memory_gb=256, bandwidth_gbs=300, fp32_tflops=4.0, simd_width=16,
          max_threads=56),
    ]
    out.update({p.name: p for p in cpus + x86})
    return out


def _x86(mcpu: str) -> dict[str, Any]:
    return {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu}


def is_x86(p: Profile) -> bool:
    """The host, or a CPU profile for another x86-64 machine (built by targets/host, run by the cpu driver)."""
    return p.name == "host" or (p.family == "cpu" and str(p.tvm.get("mtriple", "")).startswith("x86_64"))


def _host_profile(p: Profile) -> Profile:
    """The host profile with this machine's memory and cores filled in (bandwidth and compute: measure them)."""
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        mem = 0.0
    return replace(p, memory_gb=round(mem, 1), weight_budget_gb=round(mem * 0.6, 1),
                   max_threads=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


PRESETS: dict[str, Profile] = _presets()
PRESETS["host"] = _host_profile(PRESETS["host"])
_NUMBERS = ("memory_gb", "bandwidth_gbs", "fp32_tflops", "fp16_tflops", "local_mem_kb", "simd_width", "max_threads",
            "weight_budget_gb", "mesh_width", "mesh_height", "pe_sram_kb", "pe_fmacs", "pe_sram_bytes", "clock_ghz",
            "io_gbs")
_INTS = ("simd_width", "max_threads", "mesh_width", "mesh_height")


def load_toml(path: str | os.PathLike) -> dict[str, Profile]:
    """User profiles from a TOML file: one table per profile (see the module doc)."""
    import tomllib

    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise LfmcError(f"{p}: cannot read target profiles ({e})") from None
    out = {}
    for name, t in data.items():
        if not isinstance(t, dict):
            raise LfmcError(f"{p}: [{name}] must be a table")
        base = PRESETS.get(t.get("base", ""), None)
        fam = t.get("family", base.family if base else None)
        if fam not in families():
            raise LfmcError(f"{p}: [{name}] family must be one of {', '.join(families())}, not {fam!r}")
        unknown = set(t) - set(_NUMBERS) - {"family", "description", "device", "arch", "mcpu", "mtriple", "mattr",
                                           "base", "quant", "packaging", "host_mtriple"}
        if unknown:
            raise LfmcError(f"{p}: [{name}] has unknown keys {sorted(unknown)}")
        tvm_t = dict(base.tvm) if base else {"kind": {"cpu": "llvm"}.get(fam, fam)}
        for k in ("device", "arch", "mcpu", "mtriple"):
            if k in t:
                tvm_t[k] = t[k]
        if "mattr" in t:                                # LLVM attributes on top of mcpu's: ["+amx-tile", "-avx512f"]
            m = t["mattr"]
            if not isinstance(m, list) or not all(isinstance(a, str) and a[:1] in "+-" and len(a) > 1 for a in m):
                raise LfmcError(f"{p}: [{name}] mattr must be a list of LLVM attributes such as \"+amx-tile\"")
            tvm_t["mattr"] = list(m)
        host = dict(base.host) if base and base.host else ({"kind": "llvm"} if fam not in ("cpu", "wafer") else None)
        if "host_mtriple" in t:
            host = {"kind": "llvm", "mtriple": t["host_mtriple"]}
        nums = {}
        for k in _NUMBERS:
            if k in t:
                v = t[k]
                if not isinstance(v, (int, float)) or v < 0:
                    raise LfmcError(f"{p}: [{name}] {k} must be a non-negative number")
                nums[k] = int(v) if k in _INTS else float(v)
        prof = replace(base, name=name, tag=None) if base else Profile(name, fam)
        out[name] = replace(prof, family=fam, tvm=tvm_t, host=host, description=t.get("description", prof.description),
                            quant=t.get("quant", prof.quant), packaging=t.get("packaging", prof.packaging), **nums)
    return out


def all_profiles(extra: str | os.PathLike | None = None) -> dict[str, Profile]:
    """Presets plus user profiles (``extra`` or the ``LFMC_PROFILES`` file)."""
    out = dict(PRESETS)
    path = extra or os.environ.get("LFMC_PROFILES")
    if path:
        out.update(load_toml(path))
    return out


def get_profile(name: str, extra: str | os.PathLike | None = None) -> Profile:
    profs = all_profiles(extra)
    if name not in profs:
        raise LfmcError(f"unknown target {name!r} (known: {', '.join(profs)}; add your own with --profiles FILE)")
    return profs[name]


def guard_toolchain(p: Profile) -> None:
    """Refuse targets this TVM build cannot generate code for, instead of silently emitting another ISA
    (a hexagon tag quietly produces x86 in the package index's TVM)."""
    from .backend import backend_for

    kind = p.tvm.get("kind", "llvm")
    if kind == "hexagon":                   # registered, but emits x86 code in the package index's wheel
        raise LfmcError(f"target {p.name}: TVM's hexagon code generator is not in this TVM build (the package "
                        "index's wheel has no working Hexagon backend); choose an OpenCL or CPU profile")
    kind = backend_for(p).code_generator(p)
    if kind is None:                        # LLVM's CPU code, or lfmc's own code generator (the wafer)
        return
    import tvm

    if tvm.get_global_func(f"target.build.{kind}", allow_missing=True) is None:
        raise LfmcError(f"target {p.name}: this TVM build has no {kind} code generator; choose another profile")
