"""Reading compiled artifacts: the manifest, its hashes, and whether this runtime and device can run it.

Loading never unpickles anything; the only code it runs is the kernel library the verified manifest names.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..plan import SCHEMA_VERSION, STATE_DIMS, Launch, PlanError
from .errors import RuntimeLoadError

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def runtime_version() -> str:
    from .. import __version__

    return __version__


def load_manifest(path: str | Path, verify_hashes: bool = True) -> dict[str, Any]:
    """The manifest of artifact ``path``, after checking schema, lfmc version and every file's sha256."""
    root = Path(path)
    mf = root / MANIFEST
    if not mf.is_file():
        raise RuntimeLoadError(f"{root}: not an lfmc artifact (no {MANIFEST})")
    try:
        m = json.loads(mf.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RuntimeLoadError(f"{mf}: unreadable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("schema_version") != SCHEMA_VERSION:
        raise RuntimeLoadError(f"{mf}: artifact schema {m.get('schema_version') if isinstance(m, dict) else '?'}, "
                               f"this runtime reads schema {SCHEMA_VERSION}: recompile with this lfmc")
    if m.get("lfmc_version") != runtime_version():
        raise RuntimeLoadError(f"{mf}: compiled by lfmc {m.get('lfmc_version')}, this is lfmc "
                               f"{runtime_version()}: recompile the model")
    check_structure(m, mf)
    files = m["files"]
    for kname, lib in m["kernels"].items():
        if lib not in files:
            raise RuntimeLoadError(f"{mf}: the library {lib!r} of kernel {kname!r} is not among the hashed files")
    for name, digest in files.items():
        p = (root / name).resolve()
        if root.resolve() not in p.parents:
            raise RuntimeLoadError(f"{mf}: file {name!r} lies outside the artifact; refusing to load it")
        if not p.is_file():
            raise RuntimeLoadError(f"{root}: missing file {name}")
        if verify_hashes and _sha256(p) != digest:
            raise RuntimeLoadError(f"{root}: {name} was altered (sha256 does not match the manifest)")
    check_plan(m, mf)
    return m




def check_structure(m: dict[str, Any], where: Any = MANIFEST) -> None:
    """The manifest's top-level fields have the types the runtime reads (a forged manifest can hold anything)."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise RuntimeLoadError(f"{where}: {what}")

    for key in ("files", "plan", "target", "kernels", "limits", "model"):
        need(key in m, f"manifest has no {key!r}")
        need(isinstance(m[key], dict), f"{key!r} must be an object")
    strmap = lambda d: all(isinstance(k, str) and isinstance(v, str) for k, v in d.items())  # noqa: E731
    need(strmap(m["files"]), "'files' must map file names to sha256 digests")
    need(strmap(m["kernels"]), "'kernels' must map kernel names to library files")
    for k in ("max_batch", "max_context", "prefill_chunk"):
        v = m["limits"].get(k)
        need(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 24,
             f"limits.{k} must be an integer in [1, 2^24], not {v!r}")
    tok = m.get("tokenizer", {})
    need(isinstance(tok, dict) and tok.get("kind", "none") in ("json", "bytes", "none"),
         "tokenizer must be {kind: json | bytes | none}")
    need(tok.get("chat") is None or (isinstance(tok["chat"], dict) and strmap(tok["chat"])),
         "tokenizer.chat must map template / bos_token / eos_token to strings")
    p = m["plan"]
    for key, typ in (("entries", dict), ("slabs", dict), ("params", dict), ("state", dict), ("row_tile", dict),
                     ("vocab_size", int)):
        need(isinstance(p.get(key), typ) and not isinstance(p.get(key), bool), f"plan.{key} must be a {typ.__name__}")
    need(p["vocab_size"] >= 1, "plan.vocab_size must be positive")
    for name, spec in list(p["params"].items()) + list(p["state"].items()):
        need(isinstance(spec, dict) and isinstance(spec.get("shape"), list) and isinstance(spec.get("dtype"), str)
             and all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in spec["shape"]),
             f"plan tensor {name!r} needs a shape list and a dtype")
    for name, spec in p["state"].items():
        need(all(isinstance(d, int) or d in STATE_DIMS for d in spec["shape"]),
             f"plan state {name!r}: a shape dimension is a count or one of {', '.join(STATE_DIMS)}")
        w = spec.get("window")
        need(("R" in spec["shape"]) == (w is not None) and (w is None or (isinstance(w, int) and not isinstance(
            w, bool) and w >= 1)), f"plan state {name!r}: a ring (dimension R) needs its window (a positive "
             "integer), and only a ring has one")
    for name, spec in p["slabs"].items():
        need(isinstance(spec, dict) and isinstance(spec.get("dtype"), str) and isinstance(spec.get("uses"), list)
             and all(isinstance(u, list) and len(u) == 2 and isinstance(u[1], int) for u in spec["uses"]),
             f"plan slab {name!r} needs a dtype and a list of [rows, columns] uses")
    t = m["target"]
    need(all(isinstance(t.get(k, ""), str) for k in ("name", "driver", "kind")), "target name / driver / kind must "
         "be strings")
    need(isinstance(t.get("features", {}), dict), "target.features must be an object")
    need(isinstance(m["model"].get("eos_token_id"), (int, type(None))) and not isinstance(m["model"].get(
        "eos_token_id"), bool), "model.eos_token_id must be an integer or null")
    need(isinstance(p.get("variants", {}), dict), "plan.variants must be an object")
    rv = p.get("row_variants", {})
    need(isinstance(rv, dict) and set(rv) <= {"decode", "prefill"} and all(
        isinstance(v, dict) and isinstance(v.get("rows"), int) and not isinstance(v["rows"], bool)
        and 1 <= v["rows"] <= 64 and isinstance(v.get("kernels"), dict) and strmap(v["kernels"])
        and type(v.get("max_rows", 1)) is int and 1 <= v.get("max_rows", 1) <= 4096
        for v in rv.values()), "plan.row_variants must map decode / prefill to {rows: 1-64, [max_rows: rows], "
         "kernels: {kernel: kernel}}")
    need(isinstance(p.get("topk", 1), int) and p.get("topk", 1) >= 1, "plan.topk must be a positive integer")
    for e in ("prefill", "decode"):
        need(isinstance(p["entries"].get(e), list), f"plan.entries.{e} must be a list of launches")
        need(isinstance(p["row_tile"].get(e), int) and p["row_tile"][e] >= 1, f"plan.row_tile.{e} must be positive")
        lg = p.get("logits", {}).get(e) if isinstance(p.get("logits"), dict) else None
        need(isinstance(lg, list) and len(lg) == 4 and lg[0] == "slab" and lg[1] in p["slabs"]
             and (isinstance(lg[2], int) or lg[2] in ("n", "np")) and isinstance(lg[3], int) and lg[3] >= 1,
             f"plan.logits.{e} must be [\"slab\", a declared slab, rows, columns]")
    if "vision" in p or "vision" in p["entries"]:
        v, im = p.get("vision"), p.get("image")
        posint = lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 1  # noqa: E731
        raster = isinstance(v, dict) and v.get("layout") == "raster"
        need(isinstance(v, dict) and v.get("layout") in ("raster", "merge_blocks")
             and all(posint(v.get(k)) for k in ("max_patches", "merge", "patch_dim", "factor")
                     + (("grid",) if raster else ()))
             and v["merge"] == v["factor"] ** 2
             and all(v.get(k) in p["slabs"] for k in ("patches",) + (("pos_weights",) if raster else ())),
             "plan.vision needs a layout (raster, merge_blocks), max_patches, merge, patch_dim, factor (grid for "
             "raster) and its declared input slabs")
        out = v.get("output")
        need(isinstance(out, list) and len(out) == 4 and out[0] == "slab" and out[1] in p["slabs"]
             and out[2] == "m" and posint(out[3]), "plan.vision.output must be [\"slab\", a declared slab, \"m\", columns]")
        need(isinstance(p["entries"].get("vision"), list) and posint(p["row_tile"].get("vision")),
             "plan.entries.vision must be a list of launches with a row tile")
        need(isinstance(im, dict) and im.get("slab") in p["slabs"] and im.get("cols") == out[3]
             and isinstance(im.get("image_token"), int) and 0 <= im["image_token"] < p["vocab_size"],
             "plan.image must name the decoder's image-row slab, its width (the vision output's) and the image token")


def check_plan(m: dict[str, Any], where: Any = MANIFEST) -> dict[str, int]:
    """Every launch names a kernel with a library and passes arguments the runtime understands
    (:meth:`lfmc.plan.Launch.from_json`), each referring to a declared slab, parameter or state, with one argument
    count per kernel. Returns the counts."""
    plan, kernels = m["plan"], m["kernels"]
    pools = {"slab": plan["slabs"], "param": plan["params"], "state": plan["state"]}
    nargs: dict[str, int] = {}
    for entry, launches in plan["entries"].items():
        if not isinstance(launches, list):
            raise RuntimeLoadError(f"{where}: plan entry {entry!r} is not a list of launches")
        for i, raw in enumerate(launches):
            kernel = raw.get("kernel") if isinstance(raw, dict) else None
            where_l = f"{where}: plan entry {entry!r} launch {i}" + (f" ({kernel})" if kernel else "")
            try:
                L = Launch.from_json(raw)
            except PlanError as e:
                raise RuntimeLoadError(f"{where_l}: {e}") from None
            if L.kernel not in kernels:
                raise RuntimeLoadError(f"{where_l}: no library for this kernel")
            for a in L.args:
                if a.kind in pools and a.name not in pools[a.kind]:
                    raise RuntimeLoadError(f"{where_l}: {a.kind} {a.name!r} is not declared in the plan")
            if nargs.setdefault(L.kernel, len(L.args)) != len(L.args):
                raise RuntimeLoadError(f"{where_l}: launched with {len(L.args)} arguments here, {nargs[L.kernel]} "
                                       f"elsewhere")
    return nargs


def check_device(m: dict[str, Any], driver: str) -> None:
    """Refuse an artifact built for another device API, or one its driver says this machine cannot run."""
    t = m["target"]
    if t.get("driver") != driver:
        raise RuntimeLoadError(f"artifact was compiled for target {t.get('name')!r} (driver {t.get('driver')!r}), "
                               f"not for the {driver!r} driver")
    from .drivers import driver_hook

    check = driver_hook(driver, "check_artifact")
    if check is not None:
        check(m)
