"""The compile flow: a model (saved, preset or checkpoint) -> lowering -> target build -> artifact directory.

Sits above the layers (frontend, passes, targets) so that none of them reaches into another.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .ir.errors import LfmcError
from .ir.model import Model, load_model
from .ir.text import print_graph

TARGETS = ("host",)
DEFAULT_MAX_CONTEXT = 4096
DEFAULT_PREFILL_CHUNK = 256


def load_source(source: str, seed: int = 0, init_std: float | None = None) -> Model:
    """A saved model (NAME.lfm) or anything `lfmc import` accepts; presets get seeded random weights."""
    p = Path(source)
    if p.is_dir() and (p / "model.lfmir").exists():
        return load_model(p)
    from .frontend import import_source

    return import_source(source, weights=True, seed=seed, std=init_std)


def target_knobs(prof) -> tuple[dict, str]:
    """The schedule knobs per entry point of a target profile, and its pass family ("cpu" or "gpu")."""
    if prof.family in ("opencl", "cuda", "metal", "rocm"):
        from .targets.knobs import gpu_knobs

        return gpu_knobs(prof.max_threads), "gpu"
    from .targets.profiles import is_x86

    if is_x86(prof):
        from .targets.host import host_knobs, x86_features

        feats = x86_features(prof)
        return {e: host_knobs(e, feats) for e in ("prefill", "decode")}, "cpu"
    if prof.family == "cpu":
        from .targets.arm import arm_knobs

        return {e: arm_knobs(e) for e in ("prefill", "decode")}, "cpu"
    raise LfmcError(f"target {prof.name}: no build for the {prof.family} family")


def lower_for_target(model: Model, target: str = "host", passes: Sequence[str] | str | None = None,
                     quant: str | None = None, dtype: str = "f32", kv_dtype: str = "f32",
                     profiles: str | os.PathLike | None = None, act_quant: str | None = None):
    """The profile and the lowered model (kernels and plan, no packed weights) that ``compile_model`` would
    build: what ``lfmc tune`` tunes."""
    from .passes import run_pipeline
    from .targets.lower import lower
    from .targets.profiles import get_profile
    from .tvm_env import import_tvm

    import_tvm()                            # before anything imports it with torch (see lfmc/tvm_env.py)
    prof = get_profile(target, profiles)
    knobs, family = target_knobs(prof)
    _check_act_quant(prof, family, act_quant)
    model = run_pipeline(model, passes, {"quant": quant, "dtype": dtype, "kv_dtype": kv_dtype,
                                         "act_quant": act_quant}, family=family)
    return prof, lower(model.graph, None, knobs)


def _check_act_quant(prof, family: str, act_quant: str | None) -> None:
    """int8 activations (``--act-quant i8``) run on CPUs with integer dot kernels: refuse the others up front."""
    from .passes.quantize_act import act_quant_option

    if act_quant_option(act_quant) and family != "cpu":
        raise LfmcError(f"target {prof.name}: int8 activations (--act-quant) are implemented for x86 CPUs with "
                        f"AVX2 (the host target); the {prof.family} family computes with float activations")



def tokenizer_spec(model: Model, vocab_size: int) -> dict[str, Any]:
    """The manifest's tokenizer entry: the checkpoint's tokenizer.json, bytes for a 256-token vocabulary, or
    none; with the checkpoint's chat template when it had one."""
    spec: dict[str, Any] = ({"kind": "json"} if model.tokenizer is not None
                            else {"kind": "bytes"} if vocab_size == 256 else {"kind": "none"})
    if model.provenance.get("chat"):
        spec["chat"] = model.provenance["chat"]
    return spec

def compile_model(model: Model, out: str | os.PathLike, target: str = "host", max_batch: int = 8,
                  max_context: int | None = None, prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
                  progress: Callable[[int, int, str], None] | None = None, passes: Sequence[str] | str | None = None,
                  dump_ir: str | os.PathLike | None = None, log: Callable[[str], None] | None = None,
                  quant: str | None = None, dtype: str = "f32", profiles: str | os.PathLike | None = None,
                  kv_dtype: str = "f32", tuned: str | os.PathLike | None = None,
                  prune: dict[str, Any] | None = None, plot: bool = False, act_quant: str | None = None) -> Path:
    """Compile ``model`` for ``target`` into the artifact directory ``out``: the pass pipeline (``passes``:
    None = default, a list or a comma-separated string), lowering, code generation, packaging.
    ``dump_ir`` writes the IR after every phase; ``log`` receives a summary (kernels per layer); ``quant``:
    weight quantization (q8, q4g32, q4g64a, ...; None = float32); ``dtype``: f32, f16 or bf16 weights
    (activations stay float32); ``act_quant``: "i8" for int8 activations in the projections of int8 / int4
    weights (x86 AVX2 hosts; see passes/quantize_act.py); ``tuned``: a tuning database (``lfmc tune``) whose
    records replace the default schedules where they are faster; ``prune``: options of the prune-experts pass
    (experts_keep, max_weight_bytes, calibration, select, merge). Weights larger than the profile's budget are refused.
    Wafer targets are placed on their mesh and simulated (see :func:`_compile_wafer`); ``plot`` writes their
    placement and decode-timeline pictures into the artifact."""
    from .ir.verify import verify
    from .passes import resolve, run_pipeline
    from .targets.artifact import write_artifact
    from .targets.lower import kernels_per_layer, lower

    from .targets.profiles import get_profile, guard_toolchain, is_x86
    from .tvm_env import import_tvm

    import_tvm()                            # before anything imports it with torch (see lfmc/tvm_env.py)
    prof = get_profile(target, profiles)
    guard_toolchain(prof)
    if model.weights is None:
        raise LfmcError("the model has no weights (config-only import): import it with --random-weights or "
                        "from a checkpoint before compiling")
    if max_batch < 1 or prefill_chunk < 1:
        raise LfmcError("--max-batch and --prefill-chunk must be at least 1")
    verify(model.graph)
    if prof.family == "wafer":
        _check_act_quant(prof, "wafer", act_quant)
        return _compile_wafer(model, out, prof, max_batch, max_context, prefill_chunk, passes, dump_ir, log, quant,
                              dtype, kv_dtype, tuned, prune, plot)
    knobs, family = target_knobs(prof)
    _check_act_quant(prof, family, act_quant)
    if family == "gpu":
        from .targets.gpu import build_gpu

        tinfo: dict[str, Any] = {"name": prof.name, "driver": prof.driver, "kind": prof.family,
                                 "profile": prof.as_dict()}

        def build(d: Path) -> dict[str, str]:
            return build_gpu(low.kernels, prof, d, progress)
    elif is_x86(prof):
        from .targets.host import build_host, x86_features, x86_target

        tinfo = {"name": prof.name, "driver": "cpu", "kind": "llvm", "features": x86_features(prof)}
        if prof.name != "host":
            tinfo["profile"] = prof.as_dict()

        def build(d: Path) -> dict[str, str]:
            return build_host(low.kernels, d, progress, x86_target(prof))
    else:
        from .targets.arm import arm_features, build_arm

        if "aarch64" not in str(prof.tvm.get("mtriple", "")) and "arm64" not in str(prof.tvm.get("mtriple", "")):
            raise LfmcError(f"target {prof.name}: only x86-64 and arm64 CPUs are supported "
                            f"(mtriple {prof.tvm.get('mtriple')!r})")
        tinfo = {"name": prof.name, "driver": "cpu", "kind": "llvm", "features": arm_features(prof),
                 "profile": prof.as_dict()}

        def build(d: Path) -> dict[str, str]:
            return build_arm(low.kernels, prof, d, progress)
    before = kernels_per_layer(lower(model.graph, None, knobs).plan, model.graph)
    options = {"quant": quant, "dtype": dtype, "kv_dtype": kv_dtype, "act_quant": act_quant, **(prune or {})}
    model = run_pipeline(model, passes, options, dump_dir=dump_ir, family=family)
    low = lower(model.graph, model.weights, knobs)
    check_fits(prof, sum(p.type.nbytes() for p in model.graph.params().values()), model.graph)
    after = kernels_per_layer(low.plan, model.graph)
    if log:
        log(format_kernel_counts(before, after))
    tuning = None
    if tuned is not None:
        tuning = apply_tuning(low, prof, tuned, prefill_chunk)
        if log:
            log(f"tuned kernels: {tuning['tuned']} of {tuning['tasks']} from {tuning['db']} "
                f"({'measured on ' + tuning['device'] if tuning['measured'] else 'ranked by a model, NOT measured'}"
                f"; {tuning['default_fastest']} kept lfmc's default schedule (fastest), "
                f"{tuning['no_record']} without a record)")
    cfg = model.provenance.get("config") or {}
    mpe = int(cfg.get("max_position_embeddings") or DEFAULT_MAX_CONTEXT)
    max_context = int(max_context or min(DEFAULT_MAX_CONTEXT, mpe))
    if max_context < 1:
        raise LfmcError("--max-context must be at least 1")
    text = print_graph(model.graph)
    import tvm

    eos = cfg.get("eos_token_id")
    manifest: dict[str, Any] = {
        "target": tinfo,
        "tvm_version": tvm.__version__,
        "model": {"name": model.graph.name, "vocab_size": low.plan["vocab_size"],
                  "parameters": model.graph.num_parameters(), "eos_token_id": eos,
                  "bos_token_id": cfg.get("bos_token_id"), "architecture": model.provenance.get("architecture"),
                  "config": cfg, "source": {k: v for k, v in model.provenance.items() if k != "config"}},
        "ir_hash": hashlib.sha256(text.encode()).hexdigest(),
        "quant": quant or "f32",
        "act_quant": model.graph.attrs.get("act_quant", "f32"),
        "passes": resolve(passes, family),
        "weight_dtype": dtype,
        "kv_dtype": kv_dtype,
        "limits": {"max_batch": int(max_batch), "max_context": max_context, "prefill_chunk": int(prefill_chunk),
                   "max_position_embeddings": mpe},
        "tokenizer": tokenizer_spec(model, low.plan["vocab_size"]),
        "plan": low.plan,
    }
    if tuning is not None:
        manifest["tuning"] = tuning
    if prune:
        manifest["prune"] = {k: v for k, v in prune.items() if k != "calibration"}
        manifest["prune"]["layers"] = {n.name: n.attrs["pruned"] for n in model.graph.nodes if "pruned" in n.attrs}
    from .targets import cache

    hits = cache.HITS["n"]
    path = write_artifact(out, manifest, low.params, build, model.tokenizer)
    if log and family == "cpu":
        where = cache.cache_dir("cpu")
        log(f"kernel libraries: {len(low.kernels)}, {cache.HITS['n'] - hits} of them from the build cache"
            + (f" ({where})" if where else " (off: LFMC_CACHE is empty)"))
    return path


def _max_context(model: Model, max_context: int | None) -> tuple[int, int]:
    cfg = model.provenance.get("config") or {}
    mpe = int(cfg.get("max_position_embeddings") or DEFAULT_MAX_CONTEXT)
    mc = int(max_context or min(DEFAULT_MAX_CONTEXT, mpe))
    if mc < 1:
        raise LfmcError("--max-context must be at least 1")
    return mc, mpe


def _compile_wafer(model: Model, out, prof, max_batch: int, max_context: int | None, prefill_chunk: int, passes,
                   dump_ir, log, quant, dtype, kv_dtype, tuned, prune, plot: bool) -> Path:
    """Place the model on the wafer's mesh, generate its mesh program and CSL-style sources, estimate one decode
    step with the simulator, write the artifact (run by the runtime's ``wafer`` driver)."""
    from .passes import resolve, run_pipeline
    from .targets.artifact import write_artifact
    from .targets.wafer import lower_wafer, wafer_plan, write_wafer_files

    if quant or dtype != "f32":
        raise LfmcError(f"target {prof.name}: the wafer target runs float32 weights (no --quant / --dtype); "
                        "they fit its SRAM as they are")
    if tuned is not None:
        raise LfmcError(f"target {prof.name}: there is nothing to tune on a simulated wafer (--tuned)")
    options = {"kv_dtype": "f32", **(prune or {})}
    model = run_pipeline(model, passes, options, dump_dir=dump_ir, family="wafer")
    max_context, mpe = _max_context(model, max_context)
    prog, params, pl = lower_wafer(model.graph, model.weights, prof, max_batch, max_context, kv_dtype)
    est = wafer_estimate(prog, max_batch)
    if log:
        for line in wafer_report(prog, est):
            log(line)
    text = print_graph(model.graph)
    cfg = model.provenance.get("config") or {}
    manifest: dict[str, Any] = {
        "target": {"name": prof.name, "driver": "wafer", "kind": "wafer", "profile": prof.as_dict()},
        "tvm_version": None,
        "model": {"name": model.graph.name, "vocab_size": prog["vocab_size"],
                  "parameters": model.graph.num_parameters(), "eos_token_id": cfg.get("eos_token_id"),
                  "bos_token_id": cfg.get("bos_token_id"), "architecture": model.provenance.get("architecture"),
                  "config": cfg, "source": {k: v for k, v in model.provenance.items() if k != "config"}},
        "ir_hash": hashlib.sha256(text.encode()).hexdigest(),
        "quant": "f32", "passes": resolve(passes, "wafer"), "weight_dtype": "f32", "kv_dtype": kv_dtype,
        "limits": {"max_batch": int(max_batch), "max_context": max_context, "prefill_chunk": int(prefill_chunk),
                   "max_position_embeddings": mpe},
        "tokenizer": tokenizer_spec(model, prog["vocab_size"]),
        "plan": wafer_plan(prog, params),
        "wafer": {"placement": prog["placement"], "estimate": est},
    }
    if prune:
        manifest["prune"] = {k: v for k, v in prune.items() if k != "calibration"}
        manifest["prune"]["layers"] = {n.name: n.attrs["pruned"] for n in model.graph.nodes if "pruned" in n.attrs}
    path = write_artifact(out, manifest, params, lambda d: write_wafer_files(d, prog), model.tokenizer)
    if plot:
        from .targets.wafer.plot import plot_placement, plot_timeline

        plot_placement(pl, path / "placement.png")
        plot_timeline(est["timeline"], path / "decode-timeline.png", prog["machine"])
        if log:
            log(f"pictures: {path / 'placement.png'}, {path / 'decode-timeline.png'}")
    return path


def wafer_estimate(prog: dict[str, Any], batch: int = 1, context: int | None = None) -> dict[str, Any]:
    """Cycles of one decode step on a placed mesh program (the simulator, cycles only): one sequence, and
    ``batch`` sequences pipelined, at position ``context`` (default: 128 or the max context); where the single
    sequence's time goes (its critical path), and the bounds it is checked against."""
    from .runtime.drivers.wafer import MeshSim

    m = prog["machine"]
    hz = m["clock_ghz"] * 1e9
    pos = min(int(prog["context"]) - 1, 128 if context is None else int(context))
    sim = MeshSim(prog, None)
    sim.step("decode", [1], [0], [pos])                    # warm: links and clocks as in steady decoding
    sim.link_words[:] = 0
    one = sim.step("decode", [1], [0], [pos])
    link_words = float(sim.link_words.max())
    br = sim.breakdown(one)
    tl = sim.timeline(one)
    batch = max(1, min(int(batch), int(prog["slots"])))
    many = sim.step("decode", [1] * batch, list(range(batch)), [pos] * batch) if batch > 1 else one
    pl = prog["placement"]
    weights = sum(r["N"] * r["K"] for r in prog["roles"] if r["kind"] != "kv") * 4
    busiest_pe = max(max(r["_tr"]) * max(r["_tc"]) for r in sim.roles.values() if r["kind"] != "kv") * 4
    bounds = {
        "sram_bandwidth_cycles": weights / (pl["pes_used"] * m["sram_bw"]),   # every weight read once, all PEs
        "busiest_pe_cycles": busiest_pe / min(m["sram_bw"], 4 * m["fmacs"]),  # the largest tile, read at its rate
        "busiest_link_words": link_words,                                    # words on the busiest link per token
    }
    return {"position": pos, "cycles": one["cycles"], "seconds": one["seconds"], "tokens_per_s": 1 / one["seconds"],
            "batch": batch, "batch_cycles": many["cycles"], "batch_tokens_per_s": batch / many["seconds"],
            "breakdown": br, "bounds": bounds, "assumptions": sim.assumptions(), "timeline": tl,
            "clock_hz": hz}


def wafer_report(prog: dict[str, Any], est: dict[str, Any]) -> list[str]:
    """Lines for the compile summary: placement, estimate, where the time goes, assumptions."""
    pl, m = prog["placement"], prog["machine"]
    hz = m["clock_ghz"] * 1e9
    out = [f"placed on {m['name']}: {pl['pes_used']:,} of {pl['pes']:,} PEs, SRAM {pl['sram_bytes'] / 1e9:.3f} of "
           f"{pl['sram_capacity'] / 1e9:.2f} GB ({pl['sram_utilization']:.1%}), busiest PE {pl['max_pe_bytes']:,} of "
           f"{pl['pe_capacity']:,} bytes, {pl['layers']} layers in a pipeline, ~{pl['tile_elems']:,} weights per PE",
           f"estimated decode (simulated cycles, position {est['position']}): {est['cycles']:,.0f} cycles = "
           f"{est['seconds'] * 1e6:,.1f} us -> {est['tokens_per_s']:,.0f} tokens/s for one sequence; "
           f"{est['batch']} sequences pipelined: {est['batch_tokens_per_s']:,.0f} tokens/s"]
    tot = sum(est["breakdown"].values()) or 1.0
    out.append("  critical path: " + ", ".join(f"{k} {v / tot:.0%}" for k, v in est["breakdown"].items()))
    b = est["bounds"]
    out.append(f"  bounds: all weights read once over the used PEs' SRAM bandwidth {b['sram_bandwidth_cycles']:,.0f} "
               f"cycles; the largest tile {b['busiest_pe_cycles']:,.0f} cycles; busiest link "
               f"{b['busiest_link_words']:,.0f} words per token ({1 / max(hz, 1):.0e} s per cycle)")
    out.append("  assumptions: " + "; ".join(est["assumptions"]))
    return out


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


def apply_tuning(low, prof, tuned: str | os.PathLike, prefill_chunk: int) -> dict[str, Any]:
    """Apply the tuning database ``tuned`` (a ``--db`` root or one device's folder) to ``low``."""
    from .targets.tune import TuningDB, apply_tuned
    from .targets.tune.db import host_identity

    db = TuningDB.resolve(tuned, prof.name, host_identity() if prof.name == "host" else None)
    counts = apply_tuned(low, db, prefill_chunk)
    dev = db.meta["device"]
    counts.update(db=str(db.path), measured=bool(db.meta["target"].get("measured", True)),
                  device=(dev.get("cpu") or dev.get("device") or dev.get("key") or dev.get("server")
                          or dev.get("kind", "?")))
    return counts


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
    from .targets.knobs import gpu_knobs
    from .targets.lower import lower

    root = Path(artifact)
    man = json.loads((root / "manifest.json").read_text())
    src = man["model"]["source"]
    if src.get("source") != "preset":
        raise LfmcError(f"{root}: parameters can be regenerated only for presets, not for {src.get('source')!r}")
    fam = man["target"].get("kind")
    if fam not in ("opencl", "cuda", "metal", "rocm"):
        raise LfmcError(f"{root}: regenerating parameters is supported for GPU targets (this one is {fam!r})")
    m = import_preset(src["preset"], weights=True, seed=src.get("seed", 0), std=src.get("init_std"))
    prune = {k: v for k, v in man.get("prune", {}).items() if k != "layers"}
    if prune.get("select") in ("mass", "frequency", "output_norm"):
        raise LfmcError(f"{root}: experts were chosen from calibration statistics the manifest does not keep; "
                        "regenerate from the model instead")
    m = run_pipeline(m, man.get("passes"), {"quant": None if man["quant"] == "f32" else man["quant"],
                                            "dtype": man["weight_dtype"], "kv_dtype": man.get("kv_dtype", "f32"),
                                            **prune})
    low = lower(m.graph, m.weights, gpu_knobs(man["target"]["profile"]["max_threads"]))
    out = root / "params.safetensors"
    tensors = {k: np.ascontiguousarray(v) for k, v in low.params.items()}
    try:
        from safetensors.numpy import save_file
    except ImportError:                                # a bare device machine: the format is simple enough
        _write_safetensors(out, tensors)
    else:
        save_file(tensors, str(out))
    return out


_ST_DTYPE = {"float32": "F32", "float16": "F16", "uint16": "U16", "int8": "I8", "uint8": "U8", "int32": "I32"}


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A safetensors file (8-byte header length, JSON header, raw data) without the safetensors package. The
    bytes may differ from the package's (header order, padding); the runtime's reader takes either."""
    import json

    header: dict[str, Any] = {}
    off = 0
    for k in sorted(tensors):
        a = tensors[k]
        header[k] = {"dtype": _ST_DTYPE[str(a.dtype)], "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for k in sorted(tensors):
            f.write(tensors[k].tobytes())
