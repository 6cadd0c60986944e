"""Target backends: one object per target family that says how the family lowers, builds, packages and verifies
its kernels, and which runtime driver runs them. The compile flow asks this registry and never compares family
names.

By convention every folder ``lfmc/targets/<name>/`` with a ``backend.py`` registers its backend there (imported on
the first question to the registry; the module must not import TVM at import time, so that plans and parameters
can be rebuilt on a machine without it). Adding a target family is one such folder plus its profiles; a test or a
plugin may also call :func:`register` directly.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..ir.errors import LfmcError
from ..ir.graph import Graph
from ..options import CompileOptions

Progress = Callable[[int, int, str], None]
Log = Callable[[str], None]


@dataclass
class BuildContext:
    """What the compile flow hands a backend besides the model, the profile and the options: progress and log
    callbacks, whether to draw pictures, and the runtime's driver classes (targets may not import the runtime;
    the wafer backend simulates with its driver's simulator)."""

    progress: Progress | None = None
    log: Log | None = None
    plot: bool = False
    driver_class: Callable[[str], Any] | None = None

    def say(self, line: str) -> None:
        if self.log:
            self.log(line)


@dataclass
class Built:
    """What a backend hands the compile flow for one artifact: the plan and packed parameters, the manifest's
    ``target`` record, how to write the kernel files, and anything else the manifest should carry."""

    plan: dict[str, Any]
    params: dict[str, np.ndarray]
    target: dict[str, Any]
    write_kernels: Callable[[Path], dict[str, str]]       # artifact dir -> kernel name -> file
    extra: dict[str, Any] = field(default_factory=dict)   # more manifest fields (tuning, wafer placement)
    after_write: Callable[[Path], list[str]] | None = None  # artifact dir -> log lines (pictures, cache hits)


class Backend:
    """A target family's compiler side. Subclasses set the class attributes and implement :meth:`lower`."""

    name: str = ""
    families: tuple[str, ...] = ()          # profile families this backend builds
    driver: str = ""                        # the runtime driver that runs its artifacts
    without_passes: frozenset[str] = frozenset()   # default passes this family's code generator does not want
    int8_activations: bool = False          # has integer dot-product and bf16 kernels (``--act-quant i8 / bf16``)
    tunable: bool = True
    plan_report: bool = False               # --plan-only asks :meth:`plan_only` (else: weight bytes only)

    def accepts(self, profile) -> bool:
        """Whether this backend builds ``profile`` (a family may have several backends, e.g. x86 and arm64)."""
        return profile.family in self.families

    def driver_for(self, profile) -> str:
        return self.driver

    def runs_here(self, profile) -> str:
        """Whether this machine runs what ``profile`` builds, in words (``lfmc targets``)."""
        return "no"

    def check(self, profile, opts: CompileOptions) -> None:
        """Refuse options this family cannot build, before any work."""
        if opts.act_quant and not self.int8_activations:
            what = ("bf16 activations (--act-quant bf16) are implemented for CPU targets" if opts.act_quant == "bf16"
                    else "int8 activations (--act-quant) are implemented for CPUs with integer dot products (x86 "
                         "AVX2, Arm dotprod)")
            raise LfmcError(f"target {profile.name}: {what}; the {profile.family} family computes with float "
                            "activations")

    def lower(self, graph: Graph, weights: dict[str, np.ndarray], profile, opts: CompileOptions,
              ctx: BuildContext, vision: Graph | None = None, max_patches: int | None = None) -> Built:
        """Kernels, plan and packed parameters of ``graph`` (after the passes) for ``profile``. ``opts`` is
        complete: ``max_context`` resolved. ``vision``: a VL model's image encoder (the plan's ``vision`` entry,
        images of up to ``max_patches`` patches)."""
        raise NotImplementedError

    def kernels_per_layer(self, graph: Graph, profile, plan: dict[str, Any] | None = None) -> dict[str, int] | None:
        """Kernel launches per decode step and layer of ``graph`` (the compile summary; ``plan``: its plan when
        already lowered), or None."""
        return None

    def plan_only(self, graph: Graph, profile, opts: CompileOptions, ctx: BuildContext,
                  out_dir: Path | None = None) -> dict[str, Any] | None:
        """``lfmc compile --plan-only`` for families with more to say than weight bytes (None: weights only): a
        JSON-able report with ``lines`` to print."""
        return None

    def code_generator(self, profile) -> str | None:
        """The TVM target kind whose code generator builds ``profile`` beyond LLVM's CPU code (None: only LLVM or
        none at all), so that a TVM build without it is refused before any work."""
        return None

    def driver_names(self) -> tuple[str, ...]:
        return (self.driver,)

    def knobs(self, profile) -> dict[str, Any]:
        """Schedule knobs per entry point (prefill, decode) for ``profile``."""
        raise LfmcError(f"target {profile.name}: the {self.name} backend has no kernel knobs")

    def regenerate_knobs(self, target: dict[str, Any]) -> dict[str, Any] | None:
        """Knobs from a manifest's target record without TVM (parameters regenerated on a device), or None."""
        return None


_REGISTRY: dict[str, Backend] = {}
_LOADED = False


def register(backend: Backend) -> Backend:
    """Add ``backend`` (replacing one of the same name). Returns it, so a module can write
    ``BACKEND = register(MyBackend())``."""
    if not backend.name or not backend.families or not backend.driver:
        raise ValueError("a backend needs a name, its families and its driver")
    _REGISTRY[backend.name] = backend
    return backend


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def _load_builtin() -> None:
    """Import ``lfmc.targets.<folder>.backend`` for every folder that has one (they register themselves)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    pkg = Path(__file__).parent
    for m in pkgutil.iter_modules([str(pkg)]):
        if m.ispkg and (pkg / m.name / "backend.py").exists():
            importlib.import_module(f"{__package__}.{m.name}.backend")


def backends() -> list[Backend]:
    _load_builtin()
    return list(_REGISTRY.values())


def families() -> tuple[str, ...]:
    """Every profile family some backend builds, in registration order."""
    return tuple(dict.fromkeys(f for b in backends() for f in b.families))


def drivers() -> tuple[str, ...]:
    return tuple(dict.fromkeys(d for b in backends() for d in b.driver_names()))


def backend_for(profile) -> Backend:
    """The backend that builds ``profile``."""
    for b in backends():
        if b.accepts(profile):
            return b
    if profile.family in families():
        raise LfmcError(f"target {profile.name}: no {profile.family} backend takes this profile "
                        f"({profile.tvm.get('mtriple') or profile.tvm})")
    raise LfmcError(f"target {profile.name}: no backend for the {profile.family!r} family "
                    f"(known: {', '.join(families())})")


def backend_named(name: str) -> Backend:
    _load_builtin()
    if name not in _REGISTRY:
        raise LfmcError(f"no target backend {name!r} (known: {', '.join(_REGISTRY)})")
    return _REGISTRY[name]


class TvmBackend(Backend):
    """The shared flow of the families whose kernels TVM generates from the shared TensorIR kernels
    (:mod:`lfmc.targets.lower`): lower with the family's knobs, apply a tuning database, build with
    :meth:`build`. Subclasses give :meth:`knobs`, :meth:`target_info` and :meth:`build`."""

    reports_cache = False                   # log how many kernel libraries came from the CPU build cache

    def target_info(self, profile, variants: dict[str, Any] | None = None) -> dict[str, Any]:
        """The manifest's ``target`` record (what the runtime checks before loading); ``variants``: the
        artifact's ISA variants (:meth:`isa_variants`)."""
        return {"name": profile.name, "family": profile.family, "backend": self.name,
                "driver": self.driver_for(profile), "kind": profile.family, "profile": profile.as_dict()}

    def isa_variants(self, kernels: dict, profile) -> dict[str, Any]:
        """Add fallback twins to ``kernels`` for the kernels that need optional CPU features; name -> {"needs",
        "fallback"} (none by default)."""
        return {}

    def build(self, kernels: dict, profile, out_dir: Path, progress: Progress | None) -> dict[str, str]:
        """Compile ``kernels`` (name -> KernelSpec) into ``out_dir``; kernel name -> file."""
        raise NotImplementedError

    def kernels_per_layer(self, graph: Graph, profile, plan: dict[str, Any] | None = None) -> dict[str, int]:
        from .lower import kernels_per_layer, lower

        return kernels_per_layer(plan if plan is not None else lower(graph, None, self.knobs(profile)).plan, graph)

    def lower(self, graph: Graph, weights: dict[str, np.ndarray], profile, opts: CompileOptions,
              ctx: BuildContext, vision: Graph | None = None, max_patches: int | None = None) -> Built:
        from . import cache
        from .lower import lower

        low = lower(graph, weights, self.knobs(profile), vision, max_patches)
        extra: dict[str, Any] = {}
        if opts.tuned is not None:
            from .tune import apply_tuning_db

            extra["tuning"] = t = apply_tuning_db(low, profile, opts.tuned, opts.prefill_chunk)
            ctx.say(f"tuned kernels: {t['tuned']} of {t['tasks']} from {t['db']} "
                    f"({'measured on ' + t['device'] if t['measured'] else 'ranked by a model, NOT measured'}"
                    f"; {t['default_fastest']} kept lfmc's default schedule (fastest), "
                    f"{t['no_record']} without a record)")
        hits = cache.HITS["n"]

        def after_write(path: Path) -> list[str]:
            if not self.reports_cache:
                return []
            where = cache.cache_dir("cpu")
            return [f"kernel libraries: {len(low.kernels)}, {cache.HITS['n'] - hits} of them from the build cache"
                    + (f" ({where})" if where else " (off: LFMC_CACHE is empty)")]

        variants = self.isa_variants(low.kernels, profile)
        info = self.target_info(profile, variants) if variants else self.target_info(profile)
        return Built(low.plan, low.params, info,
                     lambda d: self.build(low.kernels, profile, d, ctx.progress), extra, after_write)
