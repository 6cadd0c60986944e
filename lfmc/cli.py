"""The ``lfmc`` command line: argument parsing and calls into the layers, nothing else."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .ir.errors import LfmcError
from .ir.ops import KV_DTYPES
from .progress import task
from .runtime.drivers import driver_names
from .runtime.errors import EngineError, RuntimeLoadError


def _load(path: str):
    """A saved model (NAME.lfm), or anything `lfmc import` accepts (imported on the fly, config-only)."""
    from .ir.model import load_model

    p = Path(path)
    if p.is_dir() and (p / "model.lfmir").exists():
        return load_model(p)
    from .frontend import import_source

    return import_source(path)


def cmd_import(a: argparse.Namespace) -> int:
    from .frontend import import_source
    from .ir.model import save_model

    m = import_source(a.source, weights=a.random_weights, seed=a.seed, std=a.init_std)
    if m.weights is None and a.random_weights is False and m.provenance.get("source") == "preset":
        note = " (config-only: no weights; add --random-weights for seeded random weights)"
    else:
        note = ""
    src = Path(a.source)
    out = Path(a.output or f"{src.stem if src.suffix in ('.onnx', '.gguf') else src.name}.lfm")
    save_model(m, out)
    if a.json:
        print(json.dumps({"model": str(out), "name": m.graph.name, "nodes": len(m.graph.nodes),
                          "parameters": m.graph.num_parameters(), "weights": m.weights is not None,
                          "vision_parameters": m.vision.num_parameters() if m.vision is not None else 0,
                          "source": m.provenance.get("source"), "architecture": m.provenance.get("architecture")}))
    elif not a.quiet:
        vis = (f" + an image encoder of {len(m.vision.nodes)} nodes, {m.vision.num_parameters():,} parameters"
               if m.vision is not None else "")
        print(f"wrote {out}: {len(m.graph.nodes)} nodes, {m.graph.num_parameters():,} parameters{vis}{note}")
        gg = m.provenance.get("gguf")
        if gg:
            kept = ", ".join(f"{n} {t}" for t, n in sorted(gg["kept"].items())) or "none"
            print(f"GGUF {gg['architecture']}: quantized tensors kept as they are: {kept}"
                  + (f" (lfmc weights {m.graph.attrs['quant']})" if m.graph.attrs.get("quant") else ""))
            for t, names in sorted(gg["dequantized"].items()):
                print(f"  {len(names)} {t} tensors dequantized to float32 (no lfmc format holds {t}): compile "
                      "with --quant to quantize them again")
        ox = m.provenance.get("onnx")
        if ox:
            if ox["kept"]:
                print(f"ONNX: {len(ox['kept'])} quantized weights kept as they are (lfmc weights "
                      f"{m.graph.attrs.get('quant')})")
            for line in ox["converted"][:8]:
                print(f"  {line}")
            if len(ox["converted"]) > 8:
                print(f"  ... and {len(ox['converted']) - 8} more converted (lfmc show {out} lists them)")
            if ox.get("hint"):
                print(f"  {ox['hint']}")
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from .ir.summary import format_summary, summarize
    from .ir.text import print_graph

    m = _load(a.model)
    if a.ir:
        print("".join(print_graph(g) for g in m.graphs()), end="")
        return 0
    s = summarize(m.graph)
    s["provenance"] = {k: v for k, v in m.provenance.items() if k != "config"}
    s["has_weights"] = m.weights is not None
    if m.vision is not None:                # a VL model: its image encoder and projector too
        s["vision"] = summarize(m.vision)
    if a.json:
        print(json.dumps(s, indent=1, default=str))
    else:
        print(format_summary(s))
        if m.vision is not None:
            print("\nimage encoder and projector (one image's patches in, image-token embeddings out):")
            print(format_summary(s["vision"]))
        for k in ("assumed",):
            if m.provenance.get(k):
                print(f"assumed fields: {', '.join(m.provenance[k])}")
    return 0


def cmd_export_mlir(a: argparse.Namespace) -> int:
    """The model as MLIR: lfm dialect ops, or with --lower linalg linalg on tensors (optionally run by IREE)."""
    import numpy as np

    from .targets.mlir import IreeForward, compile_iree, export_mlir

    m = _load(a.model)
    if a.check and a.lower != "linalg":
        raise LfmcError("--check runs the linalg form: add --lower linalg")
    if a.check and m.weights is None:
        raise LfmcError(f"{a.model} has no weights (config-only import): --check needs them")
    text = export_mlir(m.graph, a.lower)
    out = Path(a.output or f"{m.graph.name}.mlir")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    ops = sum(1 for ln in text.splitlines() if ' = "lfm.' in ln) if a.lower != "linalg" else \
        sum(ln.count("linalg.generic") for ln in text.splitlines())
    kind = "lfm dialect ops" if a.lower != "linalg" else "linalg.generic ops"
    print(f"wrote {out}: {ops} {kind}, {len(m.graph.params())} parameter arguments (parsed and verified by MLIR)")
    if a.check:
        from .ir.interp import Interpreter

        print("compiling with IREE for llvm-cpu ...", flush=True)
        fwd = IreeForward(compile_iree(text), m.graph, m.weights)
        V = int(next(n for n in m.graph.nodes if n.op == "embedding").params["weight"].type.shape[0])
        rng = np.random.default_rng(a.seed)
        worst = 0.0
        for T in (1, 7, 19):
            toks = rng.integers(0, V, T)
            it = Interpreter(m.graph, m.weights)
            ref = it.run(toks, it.new_state())
            err = float(np.abs(fwd(toks) - ref).max() / max(1.0, float(np.abs(ref).max())))
            worst = max(worst, err)
            print(f"  prompt of {T:2d} tokens: max |IREE - interpreter| = {err:.2e} of the logit scale")
        if worst > 1e-4:
            raise LfmcError(f"IREE's logits differ from the interpreter's by {worst:.2e} of the logit scale")
        print("IREE agrees with the interpreter")
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    from .check import compare

    if not a.against_torch:
        raise LfmcError("say what to check against: --against-torch")
    m = _load(a.model)
    lens = tuple(int(x) for x in a.prefill.split(","))
    res = compare(m, lens, a.decode_steps, a.seed, progress=None if a.json else lambda s: print(s, flush=True))
    if a.json:
        print(json.dumps(res.to_json(), indent=1))
    else:
        w = res.worst()
        print(f"max |logit diff| {res.max_abs_diff:.3g} over {len(res.cases)} calls; worst: prefill {w.prefill} "
              f"step {w.step}: {w.max_abs_diff:.3g} (limit {w.limit:.3g})")
        print("OK" if res.ok else "FAIL: over tolerance")
    return 0 if res.ok else 1


def _bytes(text: str) -> float:
    """'3GB', '512MiB', '2.5e9' -> bytes."""
    t = text.strip().upper().replace(" ", "")
    for suf, mul in (("GIB", 2**30), ("MIB", 2**20), ("GB", 1e9), ("MB", 1e6), ("G", 1e9), ("M", 1e6), ("B", 1)):
        if t.endswith(suf):
            return float(t[: -len(suf)]) * mul
    return float(t)


def _prune_options(a: argparse.Namespace, prof) -> dict | None:
    """The prune-experts options the compile flags ask for, or None."""
    if sum(x is not None and x is not False for x in (a.experts_keep, a.max_weight_bytes, a.fit or None)) > 1:
        raise LfmcError("give one of --experts-keep, --max-weight-bytes, --fit")
    opts: dict = {"select": a.select, "merge": a.merge_experts, "seed": a.seed}
    if a.calibration:
        from .passes.calibrate import load_calibration

        opts["calibration"] = load_calibration(a.calibration)
    if a.experts_keep is not None:
        opts["experts_keep"] = a.experts_keep
    elif a.max_weight_bytes is not None:
        try:
            opts["max_weight_bytes"] = _bytes(a.max_weight_bytes)
        except ValueError:
            raise LfmcError(f"--max-weight-bytes {a.max_weight_bytes!r}: expected bytes like 3GB, 512MiB, 2.5e9") \
                from None
    elif a.fit:
        if prof.weight_budget_gb <= 0:
            raise LfmcError(f"--fit: profile {prof.name} has no weight budget")
        opts["max_weight_bytes"] = prof.weight_budget_gb * 1e9
    else:
        return None
    return opts


def cmd_calibrate(a: argparse.Namespace) -> int:
    from .compile import load_source
    from .passes.calibrate import calibrate, text_tokens

    from .targets.tune.db import write_json_atomically

    try:
        text = Path(a.data).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise LfmcError(f"--data {a.data}: {e.strerror}") from None
    m = load_source(a.model, seed=a.seed)
    toks = text_tokens(m, text)[: a.max_tokens]
    bar = task("calibrating", len(toks), "token")

    def progress(i: int, n: int) -> None:
        bar.update(i - bar.done)

    r = calibrate(m, toks, a.seq_len, progress)
    bar.close()
    out = Path(a.output or f"{m.graph.name}.calibration.json")
    write_json_atomically(out, r)
    print(f"wrote {out}: {r['tokens']} tokens, {len(r['layers'])} MoE layers")
    for name, st in r["layers"].items():
        f = np.asarray(st["frequency"])
        k = f.sum()
        print(f"  %{name}: top-{int(round(k))} routing; busiest expert {f.max() / k:.1%} of picks, idlest "
              f"{f.min() / k:.1%} (uniform {1 / len(f):.1%})")
    return 0


def _plan_only(a: argparse.Namespace, opts) -> int:
    from .compile import plan_target

    r = plan_target(_load(a.model), a.target, opts, plot=a.plot, out_dir=a.output)
    lines = r.pop("lines", None)
    if a.json:
        print(json.dumps(r, indent=1))
        return 0
    if lines is not None:                          # the backend's own report (the wafer's placement)
        print("\n".join(lines))
        return 0
    gb = lambda b: f"{b / 1e9:.2f} GB"  # noqa: E731
    print(f"{r['model']} on {r['target']} ({r['quant']} weights): {gb(r['weight_bytes'])} of weights, budget "
          f"{gb(r['budget_bytes'])}: {'fits' if r['fits'] else 'does NOT fit'}")
    p = r.get("pruned")
    if p:
        ks = sorted(set(p["experts"].values()))
        per = f"{ks[0]}" if len(ks) == 1 else f"{ks[0]}-{ks[-1]}"
        print(f"with expert pruning: {per} of {max(r['experts'].values())} experts per MoE layer "
              f"({r['moe_layers']} layers, top-{r['top_k']} routing) -> {gb(p['weight_bytes'])}: "
              f"{'fits' if p['fits'] else 'does NOT fit'}")
        if not r["fits"] and opts.prune is None:
            print(f"compile with --fit (or --experts-keep {ks[0]}) to prune to this")
    elif not r["fits"]:
        print("no MoE layers to prune: quantize harder or pick a smaller model")
    return 0


def cmd_compile(a: argparse.Namespace) -> int:
    from .compile import compile_model, load_source
    from .options import CompileOptions
    from .targets.profiles import get_profile

    prof = get_profile(a.target, a.profiles)
    quant = prof.quant if a.quant is None else (None if a.quant in ("none", "f32") else a.quant)
    opts = CompileOptions(quant=quant, quant_head=a.quant_head, dtype=a.dtype, act_quant=a.act_quant,
                          kv_dtype=a.kv_dtype, passes=a.passes, prune=_prune_options(a, prof), max_batch=a.max_batch, max_context=a.max_context,
                          prefill_chunk=a.prefill_chunk, tuned=a.tuned, profiles=a.profiles)
    if a.plan_only:
        return _plan_only(a, opts)
    m = load_source(a.model, seed=a.seed, init_std=a.init_std)
    out = Path(a.output or f"{m.graph.name}.{a.target.replace(':', '-')}")
    t0 = time.perf_counter()
    bar: list = []

    def progress(i: int, n: int, name: str) -> None:
        if not bar:
            bar.append(task("building kernels", n, "kernel"))
        bar[0].update(1, name)

    if not (a.quiet or a.json):
        print(f"compiling {m.graph.name} ({m.graph.num_parameters():,} parameters) for {a.target} "
              f"({prof.family}, weights {quant or a.dtype})", flush=True)
    compile_model(m, out, a.target, opts, progress=progress, dump_ir=a.dump_ir,
                  log=None if a.quiet or a.json else print, plot=a.plot)
    for b in bar:
        b.close()
    man = json.loads((out / "manifest.json").read_text())
    if a.json:
        print(json.dumps({"artifact": str(out), "seconds": round(time.perf_counter() - t0, 2),
                          "target": a.target, "quant": man.get("quant"), "kernels": len(man["kernels"]),
                          "files": len(man["files"]), "limits": man["limits"]}))
        return 0
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    if not a.quiet:
        groups: dict[str, list[int]] = {}
        for f in sorted(man["files"]):
            d = f.rsplit("/", 1)[0] + "/*" + Path(f).suffix if "/" in f else f
            groups.setdefault(d, []).append((out / f).stat().st_size)
        print("  " + ", ".join(f"{k} ({len(v)} file{'s' if len(v) > 1 else ''}, {sum(v) / 2**20:.1f} MiB)"
                               if len(v) > 1 else f"{k} ({sum(v) / 2**20:.1f} MiB)" for k, v in groups.items()))
    return 0


def _us(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e6:,.1f}"


def cmd_tune(a: argparse.Namespace) -> int:
    from .compile import load_source, lower_for_target
    from .targets.profiles import get_profile
    from .targets.tune import make_measurer, tune_model

    prof = get_profile(a.target, a.profiles)
    quant = prof.quant if a.quant is None else (None if a.quant in ("none", "f32") else a.quant)
    bad = [e for e in a.entries.split(",") if e not in ("decode", "prefill")]
    if bad:
        raise LfmcError(f"--entries: unknown entry {bad[0]!r} (decode, prefill)")
    from .runtime.drivers import get_driver

    # an unreachable device fails before the model loads
    measurer = make_measurer(prof, a.rpc, a.key, a.estimate, get_driver=get_driver)
    m = load_source(a.model, seed=a.seed)
    prof, low = lower_for_target(m, a.target, a.passes, quant, a.dtype, a.kv_dtype, a.profiles, a.act_quant)
    bars: dict[str, Any] = {}
    seen: dict[str, int] = {}
    first: dict[str, int] = {}

    def progress(ev: dict) -> None:
        """Two bars: lfmc's default schedules timed, then the search's trials (best time and gain as the note)."""
        if ev["phase"] == "baseline":
            if "base" not in bars:
                bars["base"] = task("timing lfmc's default schedules", ev["n"], "kernel")
            bars["base"].update(1, ev["task"])
        elif ev["phase"] == "search":
            if "base" in bars:
                bars.pop("base").close()
            if "search" not in bars:
                bars["search"] = task(f"tuning {ev['tasks']} kernels", a.trials, "trial")
            first.setdefault(ev["task"], ev["trials"])           # trials a resumed database already had
            seen[ev["task"]] = ev["trials"] - first[ev["task"]]
            gain = (f" {ev['default_s'] / ev['best_s']:.2f}x" if ev["best_s"] and ev["default_s"] else "")
            bars["search"].update(sum(seen.values()) - bars["search"].done,
                                  f"{ev['task'][:28]} best {_us(ev['best_s'])} us{gain}")
        else:
            if "search" in bars:
                bars["search"].update(ev["report"].trials - bars["search"].done)
            for b in bars.values():
                b.close()

    if not (a.quiet or a.json):
        print(f"tuning {m.graph.name} for {prof.name} ({quant or a.dtype} weights): up to {a.trials} trials"
              + (f", {a.time_budget:g} min" if a.time_budget else "") + f"; database {a.db}", flush=True)
    try:
        r = tune_model(low, prof, a.db, measurer, trials=a.trials,
                       time_budget_s=a.time_budget * 60 if a.time_budget else None,
                       entries=tuple(a.entries.split(",")), max_tasks=a.max_tasks,
                       prefill_chunk=a.prefill_chunk, seed=a.seed, progress=progress)
    finally:
        measurer.close()
    if a.plot:
        from .targets.tune.plot import plot_tuning_curves

        png = plot_tuning_curves(r.tasks, Path(r.db) / "tuning-curves.png",
                                 f"{m.graph.name} on {r.device} ({'measured' if r.measured else 'NOT measured'})")
        if not (a.quiet or a.json):
            print(f"tuning curves: {png}")
    if a.json:
        print(json.dumps({"db": str(r.db), "device": r.device, "measured": r.measured, "trials": r.trials,
                          "seconds": r.seconds, "stopped": r.stopped, "tasks": r.tasks}, indent=1))
        return 0 if r.stopped != "interrupted" else 130
    print(f"{'task':<58}{'entry':<9}{'share':>6}{'trials':>7}{'default us':>12}{'best us':>10}{'gain':>7}")
    for t in r.tasks:
        print(f"{t['name'][:57]:<58}{t['entry']:<9}{t['share'] * 100:>5.0f}%{t['trials']:>7}{_us(t['default_s']):>12}"
              f"{_us(t['best_s']):>10}{(t['speedup'] or 0):>6.2f}x"
              + ("  (no candidate near the default: search stopped)" if t.get("gave_up") else ""))
    label = "measured on" if r.measured else "NOT measured: ranked by"
    print(f"{r.trials} trials in {r.seconds / 60:.1f} min, {label} {r.device}; database {r.db}"
          + ("" if r.stopped == "done" else f" (stopped: {r.stopped}; run the same command to resume)"))
    return 0 if r.stopped != "interrupted" else 130


def _printable(piece: str) -> str:
    """Control characters (random weights emit any byte) as \\xNN escapes, so a terminal stays sane."""
    return "".join(c if c.isprintable() or c in "\n\t" else f"\\x{ord(c):02x}" for c in piece)


def cmd_chat(a: argparse.Namespace) -> int:
    """An interactive terminal chat over an artifact, streaming each reply."""
    from .runtime import Engine
    from .runtime.chat import END_OF_TURN, TextStream, render_chat
    from .runtime.errors import EngineError

    eng = Engine(a.artifact, device=a.device)
    if eng.tokenizer is None:
        raise LfmcError(f"{a.artifact} has no tokenizer: lfmc chat needs text in and out (use lfmc run --tokens)")
    chat = eng.chat or {}
    system = [{"role": "system", "content": a.system}] if a.system else []
    history = list(system)
    images: list[bytes] = []            # every image of the conversation, in order
    pending: list[bytes] = []           # attached with /image, sent with the next message
    print(f"lfmc chat with {eng.manifest['model']['name']} ({'its' if chat else 'the default ChatML'} chat "
          f"template, context {eng.max_context} tokens). /reset clears the conversation; /exit or Ctrl-D quits; "
          "Ctrl-C stops a reply." + (" /image PATH attaches an image to your next message." if eng.vision else ""),
          flush=True)
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        cmd = line.strip()
        if not cmd:
            continue
        if cmd in ("/exit", "/quit"):
            return 0
        if cmd == "/reset":
            history, images, pending = list(system), [], []
            print("(conversation cleared)", flush=True)
            continue
        if cmd.startswith("/image"):
            if eng.vision is None:
                print("(this model takes no images)", flush=True)
                continue
            from .runtime.vision import ImageError, load_image

            path = cmd[len("/image"):].strip()
            try:
                data = Path(path).expanduser().read_bytes()
                load_image(data)                       # refuse a bad image now, not at the next message
            except (OSError, ImageError) as e:
                print(f"(cannot use {path!r}: {e})", flush=True)
                continue
            pending.append(data)
            print(f"(image {path} attached to your next message)", flush=True)
            continue
        history.append({"role": "user", "content": "<image>" * len(pending) + line})
        prompt = render_chat(history, chat.get("template"), chat.get("bos_token", ""), chat.get("eos_token", ""))
        try:
            ids, rows = eng.prepare(prompt, images + pending) if images or pending else (eng.encode(prompt), None)
        except EngineError as e:
            history.pop()
            print(f"({e})", flush=True)
            continue
        images, pending = images + pending, []
        room = min(a.max_new_tokens, eng.max_context - len(ids))
        if room < 1:
            history.pop()
            print(f"(the conversation no longer fits the context of {eng.max_context} tokens: /reset)", flush=True)
            continue
        print("assistant> ", end="", flush=True)
        text = TextStream(eng.decode_text, [END_OF_TURN])
        t0 = time.perf_counter()
        gen = eng.stream(ids, room, a.temperature, a.top_k, a.top_p, a.seed, image_rows=rows)
        try:
            for tok in gen:
                print(_printable(text.push(tok)), end="", flush=True)
                if text.stopped:
                    break
            else:
                print(_printable(text.push(None, final=True)), end="")
        except KeyboardInterrupt:
            print(" [stopped]", end="")
        finally:
            gen.close()
        dt = time.perf_counter() - t0
        history.append({"role": "assistant", "content": text.text})
        print(f"\n[{len(text.ids)} tokens, {len(text.ids) / dt if dt > 0 else 0:.1f} tokens/s]", flush=True)


def cmd_serve(a: argparse.Namespace) -> int:
    """The OpenAI-compatible server over an artifact."""
    import os

    from .runtime import Engine
    from .runtime.server import check_bind, serve

    key = a.api_key or os.environ.get("LFMC_API_KEY") or None
    check_bind(a.host, key)                 # before loading: refuse an open port at once
    if a.prefix_cache_bytes < 0:
        raise LfmcError(f"--prefix-cache-bytes {a.prefix_cache_bytes}: a size in bytes, or 0 for no cache")
    eng = Engine(a.artifact, device=a.device, max_batch=a.max_batch)
    spec = _speculation(a, eng, max_batch=eng.max_batch)    # a draft holds a sequence per speculating request
    name = a.model_name or eng.manifest["model"]["name"]
    print(f"lfmc serve: {a.artifact} as model {name!r} on http://{a.host}:{a.port}/v1 (completions, chat/completions, "
          f"models; /health, /metrics); up to {eng.max_batch} sequences per decode step, {a.max_queue} waiting"
          f"{'; API key required' if key else ''}; Ctrl-C stops", flush=True)
    serve(eng, a.host, a.port, name, a.max_queue, a.log_level, local_images=a.allow_local_images, api_key=key,
          prefill_budget=a.prefill_budget, prefix_cache_bytes=a.prefix_cache_bytes, **spec)
    return 0


def _speculation(a: argparse.Namespace, eng, max_batch: int | None = None) -> dict:
    """``Engine.generate``'s speculation arguments from --speculate / --draft / --draft-k (a draft artifact is
    loaded on the target's driver and checked against its tokenizer at the first use)."""
    from .runtime import Engine

    if a.speculate and a.draft:
        raise LfmcError("give one of --speculate ngram or --draft ART, not both")
    if a.draft:
        if not Path(a.draft).is_dir():
            raise LfmcError(f"--draft {a.draft}: no such artifact directory")
        return {"speculate": Engine(a.draft, device=eng.driver.name, max_batch=max_batch), "draft_k": a.draft_k}
    return {"speculate": a.speculate, "draft_k": a.draft_k} if a.speculate else {}


def cmd_run(a: argparse.Namespace) -> int:
    from .runtime import Engine

    if (a.prompt is None) == (a.tokens is None):
        raise LfmcError("give exactly one of --prompt TEXT or --tokens IDS")
    eng = Engine(a.artifact, device=a.device)
    prompt = a.prompt if a.prompt is not None else [int(t) for t in a.tokens.replace(",", " ").split()]
    stop = [] if a.ignore_eos else None
    images = [Path(p).read_bytes() if Path(p).is_file() else _no_image(p) for p in a.image or []]
    spec = _speculation(a, eng)
    if a.json:
        r = eng.generate(prompt, a.max_new_tokens, a.temperature, a.top_k, a.top_p, a.seed, stop, images=images,
                         **spec)
        print(json.dumps({"tokens": r.tokens, "text": r.text, "prompt_tokens": r.prompt_tokens,
                          "stop_reason": r.stop_reason, "prefill_s": r.prefill_s, "decode_s": r.decode_s,
                          "decode_tokens_per_s": r.decode_tokens_per_s}
                         | ({"speculation": eng.last_speculation} if spec else {})))
        return 0
    n, t0, toks, shown = 0, time.perf_counter(), [], ""
    for tok in eng.stream(prompt, a.max_new_tokens, a.temperature, a.top_k, a.top_p, a.seed, stop, images=images,
                          **spec):
        toks.append(tok)
        n += 1
        text = eng.decode_text(toks)
        if text is None:
            print(f"{tok} ", end="", flush=True)
            continue
        # decode everything so far and print what is new: multi-byte characters appear once complete
        piece, shown = text[len(shown):], text
        print(_printable(piece), end="", flush=True)
    dt = time.perf_counter() - t0
    print(f"\n[{n} tokens in {dt:.2f} s, {n / dt:.1f} tokens/s]", file=sys.stderr)
    if spec:
        st = eng.last_speculation
        print(f"[speculation: {st['accepted']} of {st['drafted']} drafted tokens accepted over {st['verify_calls']} "
              f"verify calls; {st['decode_calls']} plain decode steps]", file=sys.stderr)
    sim = getattr(eng.driver, "sim", None)
    if sim is not None and sim.calls:                 # the wafer simulator: its estimate, not this machine's time
        dec = [c for c in sim.calls if c["entry"] == "decode"]
        pre = [c for c in sim.calls if c["entry"] == "prefill"]
        us = lambda cs: sum(c["seconds"] for c in cs) * 1e6  # noqa: E731
        step = f"decode {us(dec) / len(dec):,.1f} us per token" if dec else "no decode step ran"
        print(f"[simulated on {sim.m['name']}: prefill {us(pre):,.1f} us, {step} (estimated cycles at "
              f"{sim.m['clock_ghz']} GHz)]",
              file=sys.stderr)
    return 0


def _no_image(path: str) -> bytes:
    raise LfmcError(f"--image {path}: no such file")


def cmd_bench(a: argparse.Namespace) -> int:
    from .bench import bench_engine, run_torch_baseline
    from .runtime import Engine

    lens = tuple(int(x) for x in a.prefill.split(","))
    ctxs = tuple(int(x) for x in a.contexts.split(",")) if a.plot else ()
    need = max([max(lens) + 1, a.decode_steps + 17] + [c + a.decode_steps + 2 for c in ctxs])
    if a.speculate or a.draft:                 # the speculation prompt (at most a token per character), decode, drafts
        need = max(need, max(88, len(a.spec_prompt or "") + 2) + a.decode_steps + a.draft_k + 2)
    if ctxs:
        from .runtime.artifact import load_manifest

        limit = int(load_manifest(Path(a.artifact), verify_hashes=False)["limits"]["max_context"])
        if need > limit:
            raise LfmcError(f"--contexts up to {max(ctxs)} with {a.decode_steps} decode steps need a context of "
                            f"{need}; {a.artifact} was compiled for {limit} (compile with --max-context)")
    eng = Engine(a.artifact, device=a.device, max_context=need)
    res: dict = {"artifact": str(a.artifact), "model": eng.manifest["model"]["name"],
                 "lfmc": bench_engine(eng, lens, a.decode_steps, a.reps)}
    if ctxs:
        from .bench import bench_contexts, plot_contexts

        res["contexts"] = bench_contexts(eng, ctxs, a.decode_steps)
        res["plot"] = str(plot_contexts(res["contexts"], a.plot, f"{res['model']}: decode speed and memory "
                                                                   "against context"))
    if a.profile:
        from .bench import profile_engine

        if not 1 <= a.profile_batch <= eng.max_batch:
            raise LfmcError(f"--profile-batch {a.profile_batch}: {a.artifact} decodes 1 to {eng.max_batch} sequences "
                            "per step (compile with --max-batch)")
        peaks = eng.measure_peaks()                    # each instruction family's peak on this machine
        bw = eng.measure_read_bandwidth()              # and its memory read bandwidth (CPU targets)
        res["profile"] = profile_engine(eng, "decode", a.profile_batch, peaks=peaks, bandwidth=bw)
        res["profile_prefill"] = profile_engine(eng, "prefill", min(max(lens), eng.prefill_chunk), reps=3,
                                                peaks=peaks, bandwidth=bw)
    if a.speculate or a.draft:
        res["speculation"] = _bench_speculation(a, eng)
    if a.baseline == "torch":
        res["torch"] = run_torch_baseline(eng.manifest, prefill_lens=lens, decode_steps=a.decode_steps,
                                          reps=a.reps)
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    L, Tb = res["lfmc"], res.get("torch")
    rows = [(f"prefill {k} tokens/s", L["prefill"][k], Tb and Tb["prefill"].get(k)) for k in L["prefill"]]
    rows.append(("decode tokens/s", L["decode"]["1"], Tb and Tb["decode"]["1"]))
    rows.append(("peak RSS MiB", L["memory"]["peak_rss"] / 2**20, Tb and Tb["memory"]["peak_rss"] / 2**20))
    print(f"{'':<24}{'lfmc':>10}" + (f"{'torch':>10}{'ratio':>8}" if Tb else ""))
    for name, x, y in rows:
        print(f"{name:<24}{x:>10.1f}" + (f"{y:>10.1f}{x / y:>8.2f}" if y else ""))
    m = L["memory"]
    print(f"lfmc buffers: params {m['params'] / 2**20:.1f} MiB, state {m['state'] / 2**20:.1f} MiB, "
          f"activations {m['activations'] / 2**20:.1f} MiB")
    for r in res.get("contexts", []):
        print(f"context {r['context']:>7}: decode {r['decode_tok_s']:8.1f} tokens/s, state + KV "
              f"{r['state_bytes'] / 2**20:8.2f} MiB, resident {r['rss_bytes'] / 2**20:8.1f} MiB")
    if "plot" in res:
        print(f"plot: {res['plot']}")
    if "profile" in res:
        from .bench import format_profile

        print(format_profile(res["profile"]))
        print(format_profile(res["profile_prefill"]))
    if "speculation" in res:
        from .bench import format_verify_cost

        sp = res["speculation"]
        c, m = sp["cost"], sp["measured"]
        print(f"speculation ({sp['drafter']}, prompt: {sp['prompt']}), context {c['context']}: "
              f"{format_verify_cost(c)}")
        if sp.get("draft_step") is not None:
            print(f"  a draft step costs {sp['draft_step']:.2f} target decode steps")
        print(f"  measured: {m['speculative_tok_s']:.1f} vs {m['plain_tok_s']:.1f} tokens/s plain "
              f"({m['speedup']:.2f}x); {m['acceptance']:.0%} of {m['totals']['drafted']} drafted tokens accepted, "
              f"{m['tokens_per_verify']:.2f} tokens per verify, {m['totals']['decode_calls']} plain steps")
        print("  projected at acceptance " + ", ".join(f"{a_}: {p['speedup']:.2f}x (k={p['k']})"
                                                       for a_, p in sp["projected"].items()))
    return 0


def _bench_speculation(a: argparse.Namespace, eng) -> dict:
    """lfmc bench --speculate / --draft: verify cost, speculative vs plain decoding on one prompt (measured,
    alternating) and the speed-up projected from the verify cost at the measured and at typical acceptances."""
    from .bench import bench_speculation, copying_prompt, project_speedup, verify_cost

    spec = _speculation(a, eng)
    if a.spec_prompt is not None:
        prompt, what = eng.encode(a.spec_prompt), f"{a.spec_prompt[:40]!r}"
    else:
        prompt, what = copying_prompt(eng.vocab_size), "a random 64-token passage, then its first 16 tokens again"
    steps = min(a.decode_steps, eng.max_context - len(prompt) - 1)
    if steps < 2:
        raise LfmcError(f"the speculation prompt ({len(prompt)} tokens) leaves no room to decode in the context "
                        f"of {eng.max_context}")
    ks = sorted({1, 2, 3, 4, a.draft_k} & set(range(1, eng.prefill_chunk)))
    cost = verify_cost(eng, ks, reps=max(3, a.reps))
    draft = spec["speculate"]
    step = None
    if not isinstance(draft, str):                 # a draft model: its decode step in target steps
        step = verify_cost(draft, [1], reps=max(3, a.reps))["decode_s"] / cost["decode_s"]
    m = bench_speculation(eng, prompt, draft, steps, a.draft_k, a.reps)
    rates = {"measured": m["acceptance"], "0.5": 0.5, "0.7": 0.7, "0.8": 0.8}
    return {"drafter": "ngram" if isinstance(draft, str) else f"draft {a.draft}", "prompt": what, "cost": cost,
            "draft_step": step, "measured": m,
            "projected": {k: project_speedup(cost, r, step or 0.0) for k, r in rates.items()}}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lfmc", description="Compile Liquid Foundation Models for the device they "
                                 "run on.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for add in PARSERS:
        add(sub)
    return ap


def _parser_import(sub) -> None:
    p = sub.add_parser("import", help="import a preset, an HF checkpoint directory, an ONNX or a GGUF file into a "
                       "saved model NAME.lfm")
    p.add_argument("source", help="a preset name (see `lfmc presets`), an HF checkpoint directory, or an .onnx "
                   "file exported by torch.onnx.export(..., dynamo=True) (a config.json / tokenizer.json beside "
                   "it are used), or a .gguf file of llama.cpp's lfm2 / lfm2moe architectures (docs/gguf.md)")
    p.add_argument("-o", "--output", help="output directory (default: ./SOURCE.lfm)")
    p.add_argument("--random-weights", action="store_true", help="presets: seeded random weights (numpy)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-weights (default 0)")
    p.add_argument("--init-std", type=float, default=None,
                   help="std of --random-weights (default: the config's initializer_range, 0.02)")
    p.add_argument("--quiet", action="store_true", help="no progress, no summary")
    p.add_argument("--json", action="store_true", help="print a JSON summary (and no progress)")
    p.set_defaults(fn=cmd_import)


def _parser_show(sub) -> None:
    p = sub.add_parser("show", help="per-layer operator class, featurizer, parameters and state")
    p.add_argument("model", help="a saved model (NAME.lfm), a preset or an HF checkpoint directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--ir", action="store_true", help="print the IR text instead")
    p.set_defaults(fn=cmd_show)


def _parser_export_mlir(sub) -> None:
    p = sub.add_parser("export-mlir", help="write the model as MLIR (lfm dialect, or linalg on tensors)")
    p.add_argument("model", help="a saved model (NAME.lfm), a preset or an HF checkpoint directory")
    p.add_argument("-o", "--output", help="output file (default: ./NAME.mlir)")
    p.add_argument("--lower", choices=["lfm", "linalg"], default="lfm",
                   help="lfm: one generic-form lfm.<op> per IR node (default); linalg: func / linalg / arith / "
                   "math / tensor computing the logits of a sequence")
    p.add_argument("--check", action="store_true", help="with --lower linalg: compile with IREE (llvm-cpu), run "
                   "three random prompts and compare with the interpreter")
    p.add_argument("--seed", type=int, default=0, help="seed of the --check prompts")
    p.set_defaults(fn=cmd_export_mlir)


def _parser_check(sub) -> None:
    p = sub.add_parser("check", help="check the interpreter's logits against transformers")
    p.add_argument("model", help="a saved model with weights")
    p.add_argument("--against-torch", action="store_true", help="compare with transformers' modeling code")
    p.add_argument("--prefill", default="1,7,64", help="comma-separated prefill lengths (default 1,7,64)")
    p.add_argument("--decode-steps", type=int, default=16, help="greedy decode steps after each prefill")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_check)


def _parser_compile(sub) -> None:
    p = sub.add_parser("compile", help="compile a model for a target into an artifact directory")
    p.add_argument("model", help="a saved model (NAME.lfm), a preset (seeded random weights) or an HF checkpoint dir")
    p.add_argument("--target", default="host", help="target profile (default: host, this machine's CPU; "
                   "`lfmc targets` lists them)")
    p.add_argument("--profiles", default=None, metavar="FILE", help="a TOML file of extra target profiles")
    p.add_argument("-o", "--output", help="artifact directory (default: NAME.TARGET)")
    p.add_argument("--max-batch", type=int, default=8, help="sequences per decode call (default 8)")
    p.add_argument("--max-context", type=int, default=None,
                   help="default KV-cache length per sequence (default: min(4096, max_position_embeddings))")
    p.add_argument("--prefill-chunk", type=int, default=256, help="tokens per prefill call (default 256)")
    p.add_argument("--seed", type=int, default=0, help="presets: seed of the random weights")
    p.add_argument("--init-std", type=float, default=None, help="presets: std of the random weights")
    p.add_argument("--passes", default=None,
                   help="comma-separated pass list replacing the default pipeline ('' for none; see `lfmc passes`)")
    p.add_argument("--dump-ir", default=None, metavar="DIR", help="write the IR after every phase into DIR")
    p.add_argument("--quant", default=None, help="weight quantization: q8, q4g32, q4g64, q4g128 (add 'a' for "
                   "asymmetric, e.g. q4g32a), or none; default: the target profile's (float32 for host)")
    p.add_argument("--quant-head", default="auto", choices=["auto", "same"],
                   help="with a 4-bit --quant: auto keeps the token embedding / LM head in 8-bit groups (the "
                        "logits lose the most from 4 bits; llama.cpp keeps them at 6), same quantizes them as the rest")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"],
                   help="storage of the weights that are not quantized (activations stay float32)")
    p.add_argument("--act-quant", default=None, choices=["none", "i8", "bf16"],
                   help="i8: int8 activations for the int8 / int4 projections (with --quant q8 or q4gG, G a "
                        "multiple of 32), multiplied with integer dot products (x86 AVX2 / VNNI, Arm dotprod); bf16: "
                        "bf16 activations for the bf16 projections (with --dtype bf16; AVX512-BF16 vdpbf16ps where "
                        "the CPU has it); default none")
    p.add_argument("--kv-dtype", default="f32", choices=list(KV_DTYPES),
                   help="storage of the KV cache: f32, f16, or i8 (int8 codes with a float32 scale per position "
                        "and head, CPU targets; attention computes in float32 either way)")
    p.add_argument("--experts-keep", type=int, default=None, metavar="K",
                   help="MoE: keep K experts per layer (prune-experts pass)")
    p.add_argument("--max-weight-bytes", default=None, metavar="B",
                   help="MoE: prune experts until all weights fit B bytes (e.g. 3GB)")
    p.add_argument("--fit", action="store_true", help="MoE: prune experts to the target profile's weight budget")
    p.add_argument("--select", default=None, choices=["router", "random", "mass", "frequency", "output_norm"],
                   help="which experts to keep (default: mass with --calibration, else router, a weight-only "
                        "proxy)")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="routing statistics from `lfmc calibrate` (selection and per-layer counts use them)")
    p.add_argument("--merge-experts", action="store_true",
                   help="fold each pruned expert into its most similar kept one instead of dropping it")
    p.add_argument("--plan-only", action="store_true",
                   help="only report the weight bytes against the target's budget and, for MoE models, how many "
                        "experts per layer fit (needs no weights)")
    p.add_argument("--json", action="store_true", help="print the plan (--plan-only) or a summary of the artifact "
                   "as JSON, and no progress")
    p.add_argument("--plot", action="store_true",
                   help="wafer targets: write placement.png (layers and SRAM per PE) and decode-timeline.png (one "
                        "simulated decode step) into the artifact (with --plan-only: into -o DIR or .)")
    p.add_argument("--tuned", default=None, metavar="DB",
                   help="apply a tuning database from `lfmc tune` (its root or one device's folder)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(fn=cmd_compile)


def _parser_tune(sub) -> None:
    p = sub.add_parser("tune", help="tune the model's kernels for one device into a tuning database")
    p.add_argument("model", help="a saved model, a preset or an HF checkpoint dir (as for compile)")
    p.add_argument("--target", default="host", help="target profile (default: host, this machine's CPU)")
    p.add_argument("--profiles", default=None, metavar="FILE", help="a TOML file of extra target profiles")
    p.add_argument("--db", default="lfmc-tuning", metavar="DIR",
                   help="tuning database root (default ./lfmc-tuning); records go to DIR/PROFILE/DEVICE-ID")
    p.add_argument("--trials", type=int, default=64,
                   help="candidates to measure in total, split among the kernels by their share of time")
    p.add_argument("--time-budget", type=float, default=None, metavar="MIN",
                   help="stop starting new search rounds after MIN minutes (what was measured is kept)")
    p.add_argument("--rpc", default=None, metavar="HOST:PORT",
                   help="measure on remote devices: a TVM RPC tracker (with --key) or one RPC server")
    p.add_argument("--key", default=None, help="the tracker key of the devices (with --rpc)")
    p.add_argument("--estimate", action="store_true",
                   help="no device: rank candidates with the profile's roofline model (NOT measured)")
    p.add_argument("--entries", default="decode,prefill",
                   help="which entry points' kernels to tune (default decode,prefill)")
    p.add_argument("--max-tasks", type=int, default=None, help="tune only the N kernels with the largest share")
    p.add_argument("--prefill-chunk", type=int, default=256,
                   help="the prefill chunk the artifact will use (prefill kernels are tuned at that shape)")
    p.add_argument("--seed", type=int, default=0, help="presets: weight seed; also the search's seed")
    p.add_argument("--passes", default=None, help="as for compile")
    p.add_argument("--quant", default=None, help="as for compile (tune what you will compile)")
    p.add_argument("--act-quant", default=None, choices=["none", "i8", "bf16"], help="as for compile")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
    p.add_argument("--kv-dtype", default="f32", choices=list(KV_DTYPES))
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", action="store_true", help="draw the tuning curves (best time against trials, per "
                   "kernel) into DB/PROFILE/DEVICE/tuning-curves.png")
    p.set_defaults(fn=cmd_tune)


def _parser_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="record how an MoE model routes a text (for expert pruning)")
    p.add_argument("model", help="a saved model with weights, a preset (seeded random weights) or an HF dir")
    p.add_argument("--data", required=True, metavar="FILE", help="calibration text (UTF-8)")
    p.add_argument("-o", "--output", default=None, help="statistics JSON (default NAME.calibration.json)")
    p.add_argument("--max-tokens", type=int, default=8192, help="use at most this many tokens (default 8192)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (state reset between)")
    p.add_argument("--seed", type=int, default=0, help="presets: weight seed")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(fn=cmd_calibrate)


def _parser_passes(sub) -> None:
    p = sub.add_parser("passes", help="list the passes and the default pipeline")
    p.set_defaults(fn=cmd_passes)


def _speculation_args(p: argparse.ArgumentParser, what: str) -> None:
    """--speculate ngram / --draft ART / --draft-k K, as run, serve and bench take them (:func:`_speculation`)."""
    p.add_argument("--speculate", choices=["ngram"], default=None,
                   help=f"{what}; ngram: drafts looked up in the prompt and output so far")
    p.add_argument("--draft", metavar="ART", default=None,
                   help="as --speculate, with drafts sampled from this (smaller) artifact, which must share the "
                        "model's tokenizer")
    p.add_argument("--draft-k", type=int, default=4, help="--speculate / --draft: most tokens drafted per step "
                   "(default 4; adapts to what is accepted, and drafting pauses while it does not pay)")


def _parser_run(sub) -> None:
    p = sub.add_parser("run", help="generate with a compiled artifact")
    p.add_argument("artifact")
    p.add_argument("--prompt", help="prompt text (needs a tokenizer in the artifact)")
    p.add_argument("--tokens", help="prompt token ids, comma or space separated")
    p.add_argument("--image", action="append", metavar="PATH",
                   help="an image for a vision-language artifact (repeatable): it takes the place of the prompt's "
                        "n-th <image> placeholder (the image token id in --tokens), or goes in front")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-sequence token")
    _speculation_args(p, "speculative decoding: verified in one call, the same tokens as without at temperature 0 "
                         "and the same distribution with sampling")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default=None, choices=driver_names(),
                   help="runtime driver (default: the one the artifact was compiled for)")
    p.set_defaults(fn=cmd_run)


def _parser_chat(sub) -> None:
    p = sub.add_parser("chat", help="an interactive terminal chat with an artifact, streaming replies")
    p.add_argument("artifact", help="a compiled artifact directory with a tokenizer")
    p.add_argument("--system", default=None, help="a system message opening the conversation")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest reply (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, choices=driver_names(), help="runtime driver (default: the artifact's)")
    p.set_defaults(fn=cmd_chat)


def _parser_serve(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (completions, chat, streaming) over an artifact")
    p.add_argument("artifact", help="a compiled artifact directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model-name", default=None, help="the model id clients use (default: the model's name)")
    p.add_argument("--max-batch", type=int, default=None, help="sequences per decode step (default: the artifact's)")
    p.add_argument("--max-queue", type=int, default=64, help="requests allowed to wait; beyond it: HTTP 429")
    p.add_argument("--allow-local-images", metavar="DIR", default=None,
                   help="vision models: chat requests may name image files under DIR (file:// URLs or paths); "
                        "default: data: URLs only. Images are never fetched from the network")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 and /metrics "
                   "(default: $LFMC_API_KEY; required when --host is beyond loopback)")
    p.add_argument("--prefill-budget", type=_budget, default="auto", metavar="TOKENS|auto",
                   help="prompt tokens prefilled per step while other requests generate (chunked prefill). auto "
                        "(default): as many as take about 1.5x the step's decode time at the measured prefill rate "
                        "(at least 16), so steps with prefill take about 2.5x plain ones. Smaller: steadier streams, "
                        "slower first tokens")
    _speculation_args(p, "speculative decoding per request inside the batch; drafting switches itself off where "
                         "it does not pay (a full batch)")
    p.add_argument("--prefix-cache-bytes", type=int, default=1 << 30, metavar="BYTES",
                   help="host memory for the prefix cache: requests resume from the longest cached prefix of their "
                        "prompt (states stored every 64 prompt tokens and at each request's end; least recently "
                        "used out first). Default 1 GiB; 0 turns it off")
    p.add_argument("--device", default=None, choices=driver_names(), help="runtime driver (default: the artifact's)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(fn=cmd_serve)


def _budget(v: str) -> int | str:
    """``--prefill-budget``: a positive number of tokens, or auto."""
    if v == "auto":
        return v
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of tokens or 'auto', not {v!r}")
    return n


def _parser_bench(sub) -> None:
    p = sub.add_parser("bench", help="prefill / decode tokens per second and peak memory of an artifact")
    p.add_argument("artifact")
    p.add_argument("--prefill", default="128,512", help="prefill lengths (default 128,512)")
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--reps", type=int, default=3, help="repetitions; medians are reported")
    p.add_argument("--baseline", choices=["torch"], help="also run PyTorch eager on the same weights")
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default=None, choices=driver_names(),
                   help="runtime driver (default: the one the artifact was compiled for)")
    p.add_argument("--plot", metavar="PNG", default=None, help="also measure decode speed and memory at each of "
                   "--contexts and draw them against context into PNG")
    p.add_argument("--contexts", default="128,512,2048", help="context lengths for --plot (default 128,512,2048)")
    p.add_argument("--profile", action="store_true", help="also time one decode step and one prefill chunk kernel "
                   "by kernel, with the rate each dense matmul reads its weights at (GB/s) and computes at (GOP/s, and "
                   "its share of its instruction family's peak, measured here first)")
    _speculation_args(p, "also measure speculative decoding: the cost of verifying k tokens against a decode step, "
                         "speculative vs plain tokens/s on one prompt, the speed-up projected")
    p.add_argument("--spec-prompt", metavar="TEXT", default=None,
                   help="--speculate / --draft: the prompt (default: an input-copying prompt of random tokens)")
    p.add_argument("--profile-batch", type=int, default=1, metavar="N",
                   help="--profile's decode step: of N sequences (default 1; up to the artifact's max batch)")
    p.set_defaults(fn=cmd_bench)


def _parser_verify(sub) -> None:
    p = sub.add_parser("verify", help="check an artifact (hashes, plan, parameters, kernel libraries as data) "
                       "without loading any of its code")
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_verify)


def _parser_targets(sub) -> None:
    p = sub.add_parser("targets", help="list the target profiles and their numbers")
    p.add_argument("--profiles", default=None, metavar="FILE", help="a TOML file of extra target profiles")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_targets)


def _parser_presets(sub) -> None:
    p = sub.add_parser("presets", help="list the built-in model presets")
    p.set_defaults(fn=cmd_presets)

PARSERS = (_parser_import, _parser_show, _parser_export_mlir, _parser_check, _parser_compile, _parser_tune,
           _parser_calibrate, _parser_passes, _parser_run, _parser_chat, _parser_serve, _parser_bench,
           _parser_verify, _parser_targets, _parser_presets)


def cmd_passes(a: argparse.Namespace) -> int:
    from .passes import default_passes, describe

    from .targets.backend import backends

    default = default_passes()
    for phase, name, doc in describe():
        print(f"{phase:<13} {name:<14} {'(default) ' if name in default else ''}{doc.splitlines()[0] if doc else ''}")
    print(f"default pipeline: {','.join(default)}")
    for be in backends():
        if be.without_passes:
            print(f"default pipeline on {', '.join(be.families)} targets: "
                  f"{','.join(default_passes(be.without_passes)) or '(none)'}")
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from .runtime.verify import verify_artifact

    r = verify_artifact(a.artifact)
    if a.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"{r['artifact']}: ok - model {r['model']} for {r['target']} ({r['driver']} driver); {r['files']} files "
              f"hashed, {r['parameters']} parameters, {r['kernels']} kernels in {r['libraries']} libraries "
              f"({', '.join(r['library_kinds'])}); no library was loaded")
    return 0


def cmd_targets(a: argparse.Namespace) -> int:
    from .targets.profiles import all_profiles

    profs = all_profiles(a.profiles)
    if a.json:
        print(json.dumps({k: p.as_dict() for k, p in profs.items()}, indent=1))
        return 0
    print(f"{'target':<22}{'family':<8}{'driver':<8}{'memory':>8}{'GB/s':>9}{'f32 TF':>8}{'f16 TF':>8}{'local KB':>9}"
          f"{'SIMD':>6}{'budget':>8}  {'TVM tag':<20}runs here")
    for k, p in profs.items():
        bw = f"{p.bandwidth_gbs:.0f}" if p.bandwidth_gbs < 1e6 else f"{p.bandwidth_gbs / 1e6:.1f}M"
        print(f"{k:<22}{p.family:<8}{p.driver:<8}{p.memory_gb:>6.0f}GB{bw:>9}{p.fp32_tflops:>8.1f}"
              f"{p.fp16_tflops:>8.1f}{p.local_mem_kb:>9.0f}{p.simd_width:>6}{p.weight_budget_gb:>6.0f}GB  "
              f"{(p.tag or 'lfmc'):<20}{p.as_dict()['runs_here']}")
    return 0


def cmd_presets(a: argparse.Namespace) -> int:
    from .frontend.presets import PRESETS

    for k, v in PRESETS.items():
        pub = v["published_parameters"]
        print(f"{k:<14} {v['architecture']:<20} " + (f"published {pub:,} parameters" if pub else "")
              + (f"  assumed: {'; '.join(v['assumed'])}" if v["assumed"] else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from . import progress

    progress.configure("quiet" if getattr(a, "quiet", False) or getattr(a, "json", False) else "auto")
    try:
        return a.fn(a)
    except (LfmcError, RuntimeLoadError, EngineError) as e:
        print(f"lfmc: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lfmc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
