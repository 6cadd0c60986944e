"""The arm64 CPU backend (Snapdragon, Apple silicon, iPhone): the shared kernels with NEON schedules,
cross-compiled and packaged per platform (see the package docstring), run by the ``cpu`` driver on the device."""
from __future__ import annotations

from typing import Any

from ..backend import TvmBackend, register
from ..lower import ENTRIES


def _is_arm64(profile) -> bool:
    triple = str(profile.tvm.get("mtriple", ""))
    return "aarch64" in triple or "arm64" in triple


class ArmBackend(TvmBackend):
    name = "arm64"
    families = ("cpu",)
    driver = "cpu"
    reports_cache = True
    int8_activations = True                 # NEON sdot (dotprod); lowering names a profile without it

    def accepts(self, profile) -> bool:
        return profile.family in self.families and _is_arm64(profile)

    def runs_here(self, profile) -> str:
        return "no (arm64: cross-compiled; executed here under qemu-aarch64 by make test-arm)"

    def check(self, profile, opts) -> None:
        """``--act-quant`` is left to lowering, which names a profile without integer dot products."""

    def knobs(self, profile) -> dict[str, Any]:
        from tvm.target.codegen import target_has_features

        from . import arm_dot, arm_knobs

        dot = arm_dot(profile)
        bf16dot = "bfmmla" if target_has_features("bf16", profile.target()) else "fma"
        return {e: arm_knobs(e, dot, bf16dot) for e in ENTRIES}

    def isa_variants(self, kernels, profile) -> dict[str, Any]:
        """Fallbacks for the i8mm / bf16 kernels, except in a static library (one module, one target: iOS)."""
        from . import OPTIONAL, arm_features

        return {} if profile.packaging == "static" else OPTIONAL.variants(kernels, arm_features(profile))

    def target_info(self, profile, variants: dict[str, Any] | None = None) -> dict[str, Any]:
        from . import OPTIONAL, arm_features

        return {**super().target_info(profile), "kind": "llvm", **OPTIONAL.record(arm_features(profile), variants)}

    def build(self, kernels, profile, out_dir, progress) -> dict[str, str]:
        from . import build_arm

        return build_arm(kernels, profile, out_dir, progress)


BACKEND = register(ArmBackend())
