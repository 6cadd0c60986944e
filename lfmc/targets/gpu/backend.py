"""The GPU backend (OpenCL, CUDA, Metal, ROCm): the shared kernels scheduled by dlight or bound to threads, one
device module with a launch table (:mod:`.build`), run by the ``opencl`` / ``cuda`` drivers (Metal and ROCm
artifacts are generated and checked here; a Mac or an AMD GPU runs them)."""
from __future__ import annotations

from typing import Any

from ..backend import TvmBackend, register

# the runtime driver of each GPU family (Metal artifacts run through TVM's Metal runtime on a Mac; ROCm's is HIP)
DRIVERS = {"opencl": "opencl", "cuda": "cuda", "metal": "metal", "rocm": "hip"}
RUNS_HERE = {"opencl": "yes (PoCL)", "cuda": "on a lent GPU", "metal": "no (source checked; a Mac runs it)",
             "rocm": "no (hsaco checked; an AMD GPU runs it)"}


class GpuBackend(TvmBackend):
    name = "gpu"
    families = tuple(DRIVERS)
    driver = "opencl"
    # a norm folded into a projection gives it a second reduction, which TVM's dlight GEMV rules do not take (it
    # would fall to a three-kernel fallback schedule): GPU families keep the input RMSNorm a kernel of its own
    without_passes = frozenset({"fuse-norm"})

    def driver_for(self, profile) -> str:
        return DRIVERS[profile.family]

    def runs_here(self, profile) -> str:
        return RUNS_HERE[profile.family]

    def code_generator(self, profile) -> str | None:
        return profile.tvm.get("kind")

    def driver_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(DRIVERS.values()))

    def knobs(self, profile) -> dict[str, Any]:
        from ..knobs import gpu_knobs

        return gpu_knobs(profile.max_threads)

    def regenerate_knobs(self, target: dict[str, Any]) -> dict[str, Any] | None:
        from ..knobs import gpu_knobs

        return gpu_knobs(target["profile"]["max_threads"])

    def build(self, kernels, profile, out_dir, progress) -> dict[str, str]:
        from .build import build_gpu

        return build_gpu(kernels, profile, out_dir, progress)


BACKEND = register(GpuBackend())
