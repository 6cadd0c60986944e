"""The `cpu` driver: TVM's runtime calling LLVM-compiled kernels. Memory is host numpy memory shared with TVM
through DLPack (no copies); every buffer is 64-byte aligned as TVM's kernels expect."""
from __future__ import annotations

import os
import platform
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EngineError, RuntimeLoadError
from .host import HostMemory


class CpuDriver(HostMemory):
    name = "cpu"

    def __init__(self, num_threads: int | None = None):
        # TVM's thread pool reads this once; more threads than cores makes every parallel launch slow.
        n = num_threads or int(os.environ.get("TVM_NUM_THREADS", 0)) or len(os.sched_getaffinity(0))
        os.environ["TVM_NUM_THREADS"] = str(n)
        self.num_threads = n
        self._tvm = _import_tvm_without_torch()

    def load_library(self, path: Path) -> Any:
        try:
            return self._tvm.load_module(str(path))
        except Exception as e:
            raise RuntimeLoadError(f"{path}: cannot load the kernel library ({type(e).__name__}: {e})") from None

    def function(self, lib: Any, name: str) -> Any:
        try:
            return lib[name]
        except Exception:
            raise RuntimeLoadError(f"kernel {name!r} is missing from the kernel library") from None

    def device_view(self, buf: np.ndarray, shape: tuple[int, ...]) -> Any:
        """The kernel-argument form of the first prod(shape) elements of ``buf``, shaped ``shape``."""
        return self._tvm.from_dlpack(HostMemory.device_view(self, buf, shape))

    def load_step_runner(self, path: Path) -> "StepRunner":
        """The artifact's step runner (``lfmc_step.so``): runs a whole step's launches in one native call."""
        return StepRunner(path)


_TENSOR, _INT = 70, 1        # TVM-FFI type indices (tvm/ffi/c_api.h: kTVMFFITensor, kTVMFFIInt)


class StepRunner:
    """One native call per step: the launches of a step laid out once as a table of TVM-FFI calls (each kernel's
    ``__tvm_ffi_NAME`` symbol in its already loaded library, its arguments as tensor handles and integers) that
    ``lfmc_run_step`` walks in order. Bit-identical to calling the kernels one by one: the same functions on the
    same buffers; only the Python call per kernel is gone."""

    ABI = 1

    def __init__(self, path: Path):
        import ctypes

        self._ct = ctypes
        try:
            lib = ctypes.CDLL(str(path))
            if lib.lfmc_step_runner_abi() != self.ABI:
                raise RuntimeLoadError(f"{path}: step runner ABI {lib.lfmc_step_runner_abi()}, this runtime "
                                       f"speaks {self.ABI}: recompile the model")
            self._run = lib.lfmc_run_step
        except (OSError, AttributeError) as e:
            raise RuntimeLoadError(f"{path}: cannot load the step runner ({e})") from None
        self._run.argtypes = [ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        self._run.restype = ctypes.c_int
        self._libs: dict[str, Any] = {}

    def prepare(self, launches: list[tuple[Path, str, list[Any]]]) -> Any:
        """A callable running ``launches`` ((library, kernel, arguments) each, arguments as the driver's kernel
        arguments: tensors and integers) in one call. The tensors must outlive it (the engine caches both)."""
        ct = self._ct
        fns, table, offsets = [], [], [0]
        for path, name, args in launches:
            lib = self._libs.get(str(path))
            if lib is None:   # dlopen of a loaded library: the same handle, its TVM backend hooks already bound
                lib = self._libs[str(path)] = ct.CDLL(str(path))
            try:
                fns.append(ct.cast(getattr(lib, "__tvm_ffi_" + name), ct.c_void_p).value)
            except AttributeError:
                raise RuntimeLoadError(f"{path.name}: no symbol for kernel {name!r}") from None
            for a in args:
                if isinstance(a, (int, np.integer)) and not isinstance(a, bool):
                    table.append((_INT, int(a)))
                elif hasattr(a, "__chandle__"):
                    table.append((_TENSOR, int(a.__chandle__())))
                else:
                    raise RuntimeLoadError(f"kernel {name}: argument {a!r} cannot go through the step runner")
            offsets.append(len(table))
        F = (ct.c_void_p * max(1, len(fns)))(*fns)
        A = np.array(table or [(0, 0)], np.int64).reshape(-1, 2)
        O = np.array(offsets, np.int32)
        names = [n for _, n, _ in launches]
        run, n, pa, po = self._run, len(fns), A.ctypes.data, O.ctypes.data

        def step() -> None:
            rc = run(n, F, pa, po)
            if rc:
                raise EngineError(f"kernel {names[rc - 1]} failed (launch {rc - 1} of the step)")

        step.keep = (F, A, O)        # the tables live as long as the callable
        return step


def _import_tvm_without_torch():
    """TVM's runtime without torch and without TVM's compiler (see :mod:`lfmc.tvm_env`): a device runtime pays for
    neither (about 220 MiB resident for the compiler's library alone)."""
    from ...tvm_env import import_tvm_runtime

    try:
        return import_tvm_runtime()
    except ImportError as e:
        raise RuntimeLoadError(f"the cpu driver needs TVM's runtime (pip install apache-tvm): {e}") from None


_ELF_MACHINE = {"x86_64": 62, "aarch64": 183}


def check_artifact(m: dict[str, Any]) -> None:
    """Refuse an artifact built for another CPU architecture, or for vector features this CPU lacks."""
    feats = m["target"].get("features", {})
    if feats.get("arch") and feats["arch"] != platform.machine():
        raise RuntimeLoadError(f"artifact was compiled for {feats['arch']} CPUs, this is {platform.machine()}")
    flags = _cpu_flags()
    for want, flag in _FLAGS.items():
        if feats.get(want) and flags is not None and flag not in flags:
            raise RuntimeLoadError(f"artifact was compiled for CPUs with {_SHOWN.get(flag, flag.upper())} "
                                   f"({feats.get('mcpu')}); this CPU lacks it: recompile here")


_SHOWN = {"asimddp": "DOTPROD (asimddp)", "asimdhp": "FP16 (asimdhp)"}     # flags named for the user

# aarch64 Linux: the kernel's hardware capability bits (asm/hwcap.h), read with getauxval as ggml does; qemu-user
# reports its emulated CPU's here (its /proc/cpuinfo is the host's)
_AT_HWCAP, _AT_HWCAP2 = 16, 26
_ARM_HWCAPS = {"asimddp": (_AT_HWCAP, 1 << 20), "asimdhp": (_AT_HWCAP, 1 << 10), "i8mm": (_AT_HWCAP2, 1 << 13),
               "bf16": (_AT_HWCAP2, 1 << 14)}


# the manifest's feature keys -> this CPU's flag names (x86: /proc/cpuinfo; aarch64: hwcaps)
_FLAGS = {"avx512": "avx512f", "avx2": "avx2", "fma": "fma", "avx512_vnni": "avx512_vnni", "avxvnni": "avx_vnni",
          "avx512_bf16": "avx512_bf16", "avx512_fp16": "avx512_fp16", "dotprod": "asimddp", "i8mm": "i8mm",
          "bf16": "bf16"}
# ... and those only ISA variants need: LLVM emits AMX only where a kernel asks for it (those kernels have fallbacks),
# so an artifact is not refused for them
_VARIANT_FLAGS = {**_FLAGS, "amx": "amx_tile"}


def pick_kernels(m: dict[str, Any]) -> dict[str, str]:
    """The ISA variant to run for each kernel that has one (``target.isa_variants``): the kernel itself where this
    CPU has every feature it needs, else its fallback (built without them), and so on down the fallback's own
    (x86: AMX -> VNNI -> AVX2). Kernel name -> the name to run."""
    variants = m["target"].get("isa_variants") or {}
    if not variants:
        return {}
    flags = _cpu_flags()
    if flags is not None and "amx_tile" in flags and any("amx" in v["needs"] for v in variants.values()) \
            and not _request_amx():
        flags = {f for f in flags if not f.startswith("amx")}     # the kernel refused AMX state: its fallbacks

    def pick(name: str) -> str:
        seen = set()
        while name in variants and name not in seen:
            seen.add(name)
            v = variants[name]
            if flags is not None and all(_VARIANT_FLAGS.get(f, f) in flags for f in v["needs"]):
                return name
            name = v["fallback"]                   # unknown flags (macOS): the variants that need nothing optional
        return name

    return {k: pick(k) for k in variants}


def _request_amx() -> bool:
    """Ask Linux for the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), which a process must
    do before its first tile instruction (ggml and oneDNN do the same); whether it was granted."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(158, 0x1023, 18) == 0        # SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
    except (OSError, AttributeError):
        return False


def _cpu_flags() -> set[str] | None:
    """This CPU's feature flags by their Linux names (x86: /proc/cpuinfo's flags; aarch64: the hwcap bits); None
    where unknown (macOS)."""
    if platform.machine() == "aarch64":
        try:
            import ctypes

            aux = ctypes.CDLL(None).getauxval
            aux.restype, aux.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
            return {n for n, (at, bit) in _ARM_HWCAPS.items() if aux(at) & bit}
        except (OSError, AttributeError):
            return None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def verify_library(path: Path, m: dict[str, Any], nargs: dict[str, int]) -> str:
    """The kind of a CPU kernel library (an object file, checked against the manifest's architecture)."""
    arch = m["target"].get("features", {}).get("arch")
    b = path.read_bytes()[:64]
    if b[:4] == b"\x7fELF":
        machine = struct.unpack_from("<H", b, 18)[0]
        want = _ELF_MACHINE.get(arch or "")
        if want is not None and machine != want:
            raise RuntimeLoadError(f"{path.name}: ELF for machine {machine}, the manifest says {arch}")
        return "elf"
    if b[:4] == b"\xcf\xfa\xed\xfe":
        if arch not in ("arm64", None):
            raise RuntimeLoadError(f"{path.name}: a Mach-O library, the manifest says {arch}")
        return "mach-o"
    if b[:8] == b"!<arch>\n":
        return "archive"
    raise RuntimeLoadError(f"{path.name}: not an object file or library (no ELF / Mach-O / ar header)")
