"""The compile flow: a model (saved, preset or checkpoint) -> lowering -> target build -> artifact directory.

Sits above the layers (frontend, passes, targets) so that none of them reaches into another.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from .ir.errors import LfmcError
from .ir.model import Model, load_model
from .ir.text import print_graph
from .paramfile import write_params
from .options import DEFAULT_MAX_CONTEXT, DEFAULT_PREFILL_CHUNK, CompileOptions  # noqa: F401  (re-exported)

DEFAULT_TARGET = "host"


def load_source(source: str, seed: int = 0, init_std: float | None = None) -> Model:
    """A saved model (NAME.lfm) or anything `lfmc import` accepts; presets get seeded random weights."""
    p = Path(source)
    if p.is_dir() and (p / "model.lfmir").exists():
        return load_model(p)
    from .frontend import import_source

    return import_source(source, weights=True, seed=seed, std=init_std)


def _options(options: CompileOptions | None, kw: dict[str, Any]) -> CompileOptions:
    if options is not None and kw:
        raise TypeError(f"give compile options either as `options` or as keywords, not both ({', '.join(kw)})")
    return options if options is not None else CompileOptions.from_kwargs(**kw)


def _backend(target: str, opts: CompileOptions):
    """The profile of ``target`` and the backend that builds it, the options checked against it."""
    from .targets.backend import backend_for
    from .targets.profiles import get_profile
    from .tvm_env import import_tvm

    import_tvm()                            # before anything imports it with torch (see lfmc/tvm_env.py)
    prof = get_profile(target, opts.profiles)
    be = backend_for(prof)
    be.check(prof, opts)
    return prof, be


def _context(log: Callable[[str], None] | None = None, progress=None, plot: bool = False):
    from .runtime.drivers import driver_class
    from .targets.backend import BuildContext

    return BuildContext(progress, log, plot, driver_class)


def run_passes(model: Model, be, opts: CompileOptions, dump_ir: str | os.PathLike | None = None) -> Model:
    """The pass pipeline for backend ``be``: ``opts.passes``, or the default without the passes ``be`` leaves out."""
    from .passes import run_pipeline

    return run_pipeline(model, opts.passes, opts.pass_options(), dump_dir=dump_ir, without=be.without_passes)


def lower_for_target(model: Model, target: str = DEFAULT_TARGET, passes: Sequence[str] | str | None = None,
                     quant: str | None = None, dtype: str = "f32", kv_dtype: str = "f32",
                     profiles: str | os.PathLike | None = None, act_quant: str | None = None):
    """The profile and the lowered model (kernels and plan, no packed weights) that ``compile_model`` would
    build: what ``lfmc tune`` tunes."""
    from .targets.lower import lower

    opts = CompileOptions(quant=quant, dtype=dtype, kv_dtype=kv_dtype, passes=passes, profiles=profiles,
                          act_quant=act_quant)
    prof, be = _backend(target, opts)
    knobs = be.knobs(prof)
    model = run_passes(model, be, opts)
    return prof, lower(model.graph, None, knobs)


def tokenizer_spec(model: Model, vocab_size: int) -> dict[str, Any]:
    """The manifest's tokenizer entry: the checkpoint's tokenizer.json, bytes for a 256-token vocabulary, or
    none; with the checkpoint's chat template when it had one."""
    spec: dict[str, Any] = ({"kind": "json"} if model.tokenizer is not None
                            else {"kind": "bytes"} if vocab_size == 256 else {"kind": "none"})
    if model.provenance.get("chat"):
        spec["chat"] = model.provenance["chat"]
    return spec


def compile_model(model: Model, out: str | os.PathLike, target: str = DEFAULT_TARGET,
                  options: CompileOptions | None = None, *, progress: Callable[[int, int, str], None] | None = None,
                  dump_ir: str | os.PathLike | None = None, log: Callable[[str], None] | None = None,
                  plot: bool = False, **kw: Any) -> Path:
    """Compile ``model`` for ``target`` into the artifact directory ``out``: the pass pipeline, the target's
    backend (lowering, code generation, packaging: :mod:`lfmc.targets.backend`), the manifest, all written
    atomically. ``options`` (or the same fields as keywords: ``quant``, ``dtype``, ``act_quant``, ``kv_dtype``,
    ``passes``, ``prune``, ``max_batch``, ``max_context``, ``prefill_chunk``, ``tuned``, ``profiles``; see
    :class:`lfmc.options.CompileOptions`). ``dump_ir`` writes the IR after every phase; ``log`` receives the
    compile summary; ``plot`` asks backends that draw (the wafer's placement and timeline) for their pictures.
    Weights larger than the profile's budget are refused."""
    from .ir.verify import verify
    from .targets.artifact import write_artifact

    from .targets.profiles import guard_toolchain

    opts = _options(options, kw)
    prof, be = _backend(target, opts)
    guard_toolchain(prof)
    if model.weights is None:
        raise LfmcError("the model has no weights (config-only import): import it with --random-weights or "
                        "from a checkpoint before compiling")
    verify(model.graph)
    opts = replace(opts, max_context=_max_context(model, opts)[0])
    ctx = _context(log, progress, plot)
    before = be.kernels_per_layer(model.graph, prof)
    model = run_passes(model, be, opts, dump_ir)
    check_fits(prof, sum(p.type.nbytes() for p in model.graph.params().values()), model.graph)
    if model.vision is not None:
        verify(model.vision)
        from .runtime.vision import make_processor
        from .targets.lower import vision_layout

        proc = make_processor(vision_layout(model.vision), model.provenance.get("processor") or {})
        built = be.lower(model.graph, model.weights, prof, opts, ctx, vision=model.vision,
                         max_patches=proc.max_num_patches)
        built.extra["processor"] = proc.config
    else:
        built = be.lower(model.graph, model.weights, prof, opts, ctx)
    after = be.kernels_per_layer(model.graph, prof, built.plan)
    if before is not None and after is not None:
        ctx.say(format_kernel_counts(before, after))
    path = write_artifact(out, manifest(model, opts, be, built), built.params, built.write_kernels, model.tokenizer)
    for line in built.after_write(path) if built.after_write else []:
        ctx.say(line)
    return path


def manifest(model: Model, opts: CompileOptions, be, built) -> dict[str, Any]:
    """The manifest of an artifact (written by :func:`lfmc.targets.artifact.write_artifact`, which adds the
    schema version, the files and their hashes): target, model, options, limits, tokenizer and plan."""
    import tvm

    from .passes import resolve

    cfg = model.provenance.get("config") or {}
    passes = resolve(opts.passes, be.without_passes)
    vocab = built.plan["vocab_size"]
    m: dict[str, Any] = {
        "target": built.target,
        "tvm_version": tvm.__version__,
        "model": {"name": model.graph.name, "vocab_size": vocab, "parameters": model.graph.num_parameters(),
                  "eos_token_id": cfg.get("eos_token_id"), "bos_token_id": cfg.get("bos_token_id"),
                  "architecture": model.provenance.get("architecture"), "config": cfg,
                  "source": {k: v for k, v in model.provenance.items() if k != "config"}},
        "ir_hash": hashlib.sha256(print_graph(model.graph).encode()).hexdigest(),
        "quant": opts.quant or "f32",
        "act_quant": model.graph.attrs.get("act_quant", "f32"),
        "passes": passes,
        "weight_dtype": opts.dtype,
        "kv_dtype": opts.kv_dtype,
        "options": opts.manifest(passes),
        "limits": {"max_batch": opts.max_batch, "max_context": opts.max_context,
                   "prefill_chunk": opts.prefill_chunk, "max_position_embeddings": _max_context(model, opts)[1]},
        "tokenizer": tokenizer_spec(model, vocab),
        "plan": built.plan,
        **built.extra,
    }
    if opts.prune:
        m["prune"] = {k: v for k, v in opts.prune.items() if k != "calibration"}
        m["prune"]["layers"] = {n.name: n.attrs["pruned"] for n in model.graph.nodes if "pruned" in n.attrs}
    return m


def _max_context(model: Model, opts: CompileOptions) -> tuple[int, int]:
    cfg = model.provenance.get("config") or {}
    return opts.context(cfg.get("max_position_embeddings"))


def plan_target(model: Model, target: str, opts: CompileOptions, plot: bool = False,
                out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """``lfmc compile --plan-only``: what the target's backend reports from the config alone (the wafer: its
    placement and a simulated decode step), else the weight bytes against the budget (:func:`plan_weights`)."""
    prof, be = _backend(target, opts)
    if not be.plan_report:
        return plan_weights(model, prof, opts.quant, opts.dtype, opts.prune)
    m = run_passes(Model(model.graph, None, model.provenance), be, CompileOptions(passes=opts.passes))
    return be.plan_only(m.graph, prof, replace(opts, max_context=_max_context(model, opts)[0]), _context(plot=plot),
                        Path(out_dir) if out_dir else None)


def wafer_estimate(prog: dict[str, Any], batch: int = 1, context: int | None = None) -> dict[str, Any]:
    """One simulated decode step of a placed mesh program (see :func:`lfmc.targets.wafer.estimate.estimate`),
    with the runtime's simulator."""
    from .runtime.drivers import driver_class
    from .targets.wafer.backend import BACKEND
    from .targets.wafer.estimate import estimate

    return estimate(prog, driver_class(BACKEND.driver).Simulator, batch, context)


def check_fits(prof, nbytes: int, graph=None) -> None:
    """Refuse weights larger than the profile's weight budget (bytes as the IR stores them: int4 codes at half a
    byte, their scales, float32 norms), saying by how much and what would help."""
    budget = float(prof.weight_budget_gb) * 1e9
    if budget > 0 and nbytes > budget:
        moe = graph is not None and any(n.op == "moe" for n in graph.nodes)
        raise LfmcError(f"the weights take {nbytes / 1e9:.2f} GB, over {prof.name}'s weight budget of "
                        f"{budget / 1e9:.2f} GB by {(nbytes - budget) / 1e9:.2f} GB: quantize (--quant q4g32)"
                        + (", or prune experts (--fit, --experts-keep K; --plan-only shows what fits)" if moe
                           else ", or pick a smaller model"))


def plan_weights(model: Model, prof, quant: str | None, dtype: str = "f32",
                 prune: dict[str, Any] | None = None) -> dict[str, Any]:
    """``lfmc compile --plan-only``: the weight bytes of ``model`` (weights not needed) on ``prof`` as stored
    there, whether they fit its budget, and for MoE models how many experts per layer fit."""
    from .passes.prune_experts import plan_counts, prune_experts, weight_bytes

    budget = float(prof.weight_budget_gb) * 1e9
    full = sum(weight_bytes(model.graph, quant, dtype).values())
    moes = [n for n in model.graph.nodes if n.op == "moe"]
    out: dict[str, Any] = {"model": model.graph.name, "target": prof.name, "quant": quant or dtype,
                           "weight_bytes": full, "budget_bytes": budget, "fits": budget <= 0 or full <= budget,
                           "moe_layers": len(moes)}
    if moes:
        out["experts"] = {n.name: n.attrs["num_experts"] for n in moes}
        out["top_k"] = max(n.attrs["top_k"] for n in moes)
        want = dict(prune or {})
        if not want.get("experts_keep") and budget > 0:
            want.setdefault("max_weight_bytes", budget)
        if want.get("experts_keep") or want.get("max_weight_bytes"):
            if want.get("max_weight_bytes"):
                counts = plan_counts(model.graph, float(want["max_weight_bytes"]), quant, dtype,
                                     want.get("calibration"))
            else:
                counts = {n.name: int(want["experts_keep"]) for n in moes}
            pruned = prune_experts.run(Model(model.graph, None, model.provenance), {**want, "quant": quant,
                                                                                  "dtype": dtype})
            out["pruned"] = {"experts": counts,
                             "weight_bytes": sum(weight_bytes(pruned.graph, quant, dtype).values())}
            out["pruned"]["fits"] = budget <= 0 or out["pruned"]["weight_bytes"] <= budget
    return out


def format_kernel_counts(before: dict[str, int], after: dict[str, int]) -> str:
    """'kernels per decode step: layers 0, 1, 3: 10 -> 5; ...' grouped by (before, after)."""
    groups: dict[tuple[int, int], list[str]] = {}
    for k in before:
        groups.setdefault((before[k], after.get(k, 0)), []).append(k.replace("layer ", ""))
    parts = [f"{'layers ' + ', '.join(v) if v[0] != 'other' else 'outside layers'}: {b} -> {a}"
             for (b, a), v in groups.items()]
    return (f"kernels per decode step: {sum(before.values())} -> {sum(after.values())} after fusion ("
            + "; ".join(parts) + ")")


def regenerate_params(artifact: str | os.PathLike) -> Path:
    """Rebuild ``params.safetensors`` of an artifact compiled from a preset (seeded random weights) from its
    manifest alone: same preset, seed, std, passes, quantization and target knobs. Needs neither TVM nor torch,
    so a large model's artifact can travel without its weights (to a lent GPU) and get them back there."""
    import json

    from .frontend import import_preset
    from .passes import run_pipeline
    from .targets.backend import backends
    from .targets.lower import lower

    root = Path(artifact)
    man = json.loads((root / "manifest.json").read_text())
    src = man["model"]["source"]
    if src.get("source") != "preset":
        raise LfmcError(f"{root}: parameters can be regenerated only for presets, not for {src.get('source')!r}")
    t = man["target"]
    fam = t.get("family") or t.get("kind")
    knobs = next((k for b in backends() if fam in b.families for k in [b.regenerate_knobs(t)] if k), None)
    if knobs is None:
        raise LfmcError(f"{root}: regenerating parameters is supported for GPU targets (this one is {fam!r})")
    m = import_preset(src["preset"], weights=True, seed=src.get("seed", 0), std=src.get("init_std"))
    prune = {k: v for k, v in man.get("prune", {}).items() if k != "layers"}
    if prune.get("select") in ("mass", "frequency", "output_norm"):
        raise LfmcError(f"{root}: experts were chosen from calibration statistics the manifest does not keep; "
                        "regenerate from the model instead")
    m = run_pipeline(m, man.get("passes"), {"quant": None if man["quant"] == "f32" else man["quant"],
                                            "dtype": man["weight_dtype"], "kv_dtype": man.get("kv_dtype", "f32"),
                                            **prune})
    low = lower(m.graph, m.weights, knobs)
    out = root / "params.safetensors"
    tmp = out.with_name(out.name + ".tmp")
    write_params(tmp, low.params)                      # numpy alone: a bare device machine has no safetensors
    os.replace(tmp, out)                               # a running engine keeps its mapping of the old file
    return out
