"""The x86-64 CPU backend: the host and other x86-64 profiles, one LLVM-built ``.so`` per kernel, run by the
``cpu`` driver."""
from __future__ import annotations

from typing import Any

from ..backend import TvmBackend, register
from ..lower import ENTRIES
from ..profiles import is_x86


class X86Backend(TvmBackend):
    name = "x86"
    families = ("cpu",)
    driver = "cpu"
    int8_activations = True                 # AVX2 / VNNI integer dot products (knobs.dot)
    reports_cache = True

    def accepts(self, profile) -> bool:
        return profile.family in self.families and is_x86(profile)

    def runs_here(self, profile) -> str:
        from . import x86_runs_here

        return x86_runs_here(profile)

    def knobs(self, profile) -> dict[str, Any]:
        from . import host_knobs, x86_features

        feats = x86_features(profile)
        return {e: host_knobs(e, feats) for e in ENTRIES}

    def isa_variants(self, kernels, profile) -> dict[str, Any]:
        from . import OPTIONAL, x86_features

        return OPTIONAL.variants(kernels, x86_features(profile)) if is_x86(profile) else {}

    def target_info(self, profile, variants: dict[str, Any] | None = None) -> dict[str, Any]:
        from . import OPTIONAL, x86_features

        t = {**super().target_info(profile), "kind": "llvm", **OPTIONAL.record(x86_features(profile), variants)}
        if profile.name == "host":           # this machine: its features are what the runtime checks
            del t["profile"]
        return t

    def build(self, kernels, profile, out_dir, progress) -> dict[str, str]:
        from . import build_host, x86_features, x86_target

        return build_host(kernels, out_dir, progress, x86_target(profile), x86_features(profile))


BACKEND = register(X86Backend())
