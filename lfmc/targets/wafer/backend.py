"""The wafer backend: the model placed on a Cerebras-like mesh, its mesh program and CSL-style sources, a decode
step estimated with the runtime's mesh simulator; run (simulated) by the ``wafer`` driver."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...ir.errors import LfmcError
from ...ir.graph import Graph
from ...options import CompileOptions
from ..backend import Backend, BuildContext, Built, register


class WaferBackend(Backend):
    name = "wafer"
    families = ("wafer",)
    driver = "wafer"
    tunable = False
    plan_report = True
    # the wafer's code generator decides its own fusions (gates on row-end PEs, norms where values live)
    without_passes = frozenset({"fuse-norm", "fuse-swiglu", "fuse-rope", "fuse-residual", "fuse-post-norm"})

    def runs_here(self, profile) -> str:
        return "simulated (lfmc's mesh simulator: real numerics, estimated cycles)"

    def check(self, profile, opts: CompileOptions) -> None:
        super().check(profile, opts)
        if opts.quant or opts.dtype != "f32":
            raise LfmcError(f"target {profile.name}: the wafer target runs float32 weights (no --quant / --dtype); "
                            "they fit its SRAM as they are")
        if opts.tuned is not None:
            raise LfmcError(f"target {profile.name}: there is nothing to tune on a simulated wafer (--tuned)")

    def _place(self, graph: Graph, weights, profile, opts: CompileOptions, ctx: BuildContext):
        from . import lower_wafer
        from .estimate import estimate, report

        if ctx.driver_class is None:
            raise LfmcError("internal: the wafer backend estimates with the runtime's simulator (driver_class)")
        prog, params, pl = lower_wafer(graph, weights, profile, opts.max_batch, opts.max_context, opts.kv_dtype)
        est = estimate(prog, ctx.driver_class(self.driver).Simulator, opts.max_batch)
        return prog, params, pl, est, report(prog, est)

    def lower(self, graph: Graph, weights, profile, opts: CompileOptions, ctx: BuildContext,
              vision: Graph | None = None, max_patches: int | None = None) -> Built:
        if vision is not None:
            raise LfmcError(f"{profile.name}: the wafer target does not run vision encoders yet; compile a "
                            "vision-language model for a cpu, opencl, cuda, metal or rocm target")
        from . import wafer_plan, write_wafer_files

        prog, params, pl, est, lines = self._place(graph, weights, profile, opts, ctx)
        for line in lines:
            ctx.say(line)

        def after_write(path: Path) -> list[str]:
            return self._pictures(pl, est, prog, path) if ctx.plot else []

        target = {"name": profile.name, "family": profile.family, "backend": self.name, "driver": self.driver,
                  "kind": "wafer", "profile": profile.as_dict()}
        return Built(wafer_plan(prog, params), params, target, lambda d: write_wafer_files(d, prog),
                     {"wafer": {"placement": prog["placement"], "estimate": est}, "tvm_version": None}, after_write)

    @staticmethod
    def _pictures(pl, est: dict[str, Any], prog: dict[str, Any], d: Path) -> list[str]:
        from .plot import plot_placement, plot_timeline

        d.mkdir(parents=True, exist_ok=True)
        plot_placement(pl, d / "placement.png")
        plot_timeline(est["timeline"], d / "decode-timeline.png", prog["machine"])
        return [f"pictures: {d / 'placement.png'}, {d / 'decode-timeline.png'}"]

    def plan_only(self, graph: Graph, profile, opts: CompileOptions, ctx: BuildContext,
                  out_dir: Path | None = None) -> dict[str, Any]:
        """Placement and a simulated decode estimate from the config alone."""
        prog, _, pl, est, lines = self._place(graph, None, profile, opts, ctx)
        lines = [f"{graph.name} on {profile.name} (config only, max batch {opts.max_batch}, context "
                 f"{opts.max_context}):"] + lines
        if ctx.plot:
            lines += self._pictures(pl, est, prog, Path(out_dir or "."))
        return {"model": graph.name, "target": profile.name, "placement": prog["placement"],
                **{k: v for k, v in est.items() if k != "timeline"}, "lines": lines}


BACKEND = register(WaferBackend())
