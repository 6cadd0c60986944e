"""GPU families (OpenCL, CUDA, Metal, ROCm): schedules for the shared kernels, device code, launch tables.

Two schedule rules, chosen per kernel:

- kernels written as TE computations (matmuls with their fused prologues/epilogues, MoE experts, embedding) are
  scheduled by TVM's dlight rules for the concrete target (GEMV, low-batch GEMV, matmul, reductions, fallback);
- lfmc's own loop kernels (gated conv, scan, QK-norm + RoPE + attention, router, elementwise) put all their work
  in one loop over independent iterations; for a GPU family (``Knobs.gpu``) that loop is a grid of
  ``threads``-wide blocks, one thread per iteration, where the CPU runs it on its thread pool (the bodies are
  the same TIR).

The TVM wheels here have no GPU runtime, so TVM is only the code generator: :func:`build_device` compiles
every kernel into one device module and reads, from the host side of TVM's own lowering, how each kernel is
launched (device functions, argument order, grid and block sizes as expressions of the symbolic shapes). lfmc's
runtime drivers (``opencl``, ``cuda``) launch from that table without TVM.
"""
from __future__ import annotations

from typing import Any

import tvm
from tvm import tirx

from ...ir.errors import LfmcError

__all__ = ["schedule", "build_device", "expr_to_str"]

TABLE_FORMAT = 1          # bump when the launch-table extraction changes: cached device modules are keyed by it


def dlight_schedule(f: tirx.PrimFunc, target: tvm.target.Target):
    """dlight's schedule of a TE kernel for ``target``, as a traced ``Schedule`` (the first rule that applies,
    as ``ApplyDefaultSchedule`` does; tuning stores its trace as the baseline record), or None."""
    from tvm.s_tir import dlight as dl

    f = f.without_attr("lfmc.schedule") if f.attrs is not None and "lfmc.schedule" in f.attrs else f
    with target:
        for rule in (dl.gpu.GEMV(), dl.gpu.LowBatchGEMV(), dl.gpu.Matmul(), dl.gpu.Reduction(),
                     dl.gpu.GeneralReduction(), dl.gpu.Fallback()):
            sch = rule.apply(f, target, False)
            if sch is not None:
                return sch[0] if isinstance(sch, list) else sch
    return None


def schedule(f: tirx.PrimFunc, target: tvm.target.Target, threads: int) -> tirx.PrimFunc:
    """The GPU schedule of one shared kernel for ``target`` (see the module doc)."""
    if f.attrs is not None and f.attrs.get("lfmc.schedule") == "dlight":
        sch = dlight_schedule(f, target)
        if sch is None:
            raise LfmcError("no dlight rule applies")
        return sch.mod["main"]
    return f                                   # lfmc's loop kernels bind their own threads (kernels._grid)


# ------------------------------------------------------------------------------------- launch tables
_BINOPS = {tirx.Add: "+", tirx.Sub: "-", tirx.Mul: "*", tirx.FloorDiv: "//", tirx.FloorMod: "%",
           tirx.Div: "//", tirx.Mod: "%"}


def expr_to_str(e: Any, lets: dict, names: set[str]) -> str:
    """An integer TIR expression as Python-syntax text over the names in ``names`` (let-bound variables are
    substituted), for the runtime's small evaluator: + - * // % min max and integer constants only."""
    if isinstance(e, (int,)):
        return str(e)
    if isinstance(e, tirx.IntImm):
        return str(int(e.value))
    if isinstance(e, tirx.Var):
        if e.name in names:
            return e.name
        if e.name in lets:
            return expr_to_str(lets[e.name], lets, names)
        raise LfmcError(f"internal: launch size depends on {e.name}, which the runtime cannot know")
    if isinstance(e, tirx.Cast):
        return expr_to_str(e.value, lets, names)
    for cls, op in _BINOPS.items():
        if isinstance(e, cls):
            return f"({expr_to_str(e.a, lets, names)} {op} {expr_to_str(e.b, lets, names)})"
    if isinstance(e, (tirx.Min, tirx.Max)):
        fn = "min" if isinstance(e, tirx.Min) else "max"
        return f"{fn}({expr_to_str(e.a, lets, names)}, {expr_to_str(e.b, lets, names)})"
    raise LfmcError(f"internal: cannot express {type(e).__name__} {e} in a launch table")


_CHILDREN = ("seq", "body", "then_case", "else_case", "value", "block", "init", "args", "condition", "message")


def _walk(node: Any, visit) -> None:
    """Pre-order walk over a TIR statement tree (the Python API has no generic visitor)."""
    if node is None or isinstance(node, (str, int, float)):
        return
    if isinstance(node, (list, tuple)) or type(node).__name__ == "Array":
        for x in node:
            _walk(x, visit)
        return
    visit(node)
    for attr in _CHILDREN:
        if hasattr(node, attr) and not (attr == "value" and isinstance(node, (tirx.IntImm, tirx.FloatImm,
                                                                               tvm.ir.StringImm))):
            try:
                child = getattr(node, attr)
            except Exception:                      # noqa: BLE001
                continue
            _walk(child, visit)


def _launches(host: tirx.PrimFunc, orig: tirx.PrimFunc) -> dict[str, Any]:
    """How the host side of ``orig`` (after TVM's split into host and device functions) launches its device
    kernels: per launch the device function, its arguments (a parameter of ``orig`` by index, or an integer
    expression) and its grid / block sizes; plus where each symbolic shape variable comes from."""
    params = list(orig.params)
    buf_param: dict[str, int] = {}
    shape_vars: dict[str, list[int]] = {}
    scalar_params: dict[str, int] = {}
    for i, p in enumerate(params):
        shape = getattr(p, "shape", None)
        if shape is not None:                          # a buffer parameter
            buf_param[p.name] = i
            for d, sv in enumerate(shape):
                if isinstance(sv, tirx.Var) and sv.name not in shape_vars:
                    shape_vars[sv.name] = [i, d]
        else:
            scalar_params[p.name] = i
    for k in scalar_params:                            # a scalar argument wins over a shape it also sizes
        shape_vars.pop(k, None)
    names = set(shape_vars) | set(scalar_params)
    lets: dict[str, Any] = {}                            # let-bound variable name -> value
    data_of: list[tuple[Any, int]] = []                  # (buffer data expression, parameter index)
    calls: list = []
    temps: list = []

    def visit(node):
        if isinstance(node, (tirx.LetStmt, tirx.Bind)):
            lets[node.var.name] = node.value
        elif isinstance(node, tirx.DeclBuffer) and node.buffer.name in buf_param:
            data_of.append((node.buffer.data, buf_param[node.buffer.name]))
        elif isinstance(node, tirx.AllocBuffer):             # a global temporary between two device kernels
            temps.append(node.buffer)
        elif isinstance(node, tvm.ir.Call) and getattr(node.op, "name", "") in ("tirx.call_ffi_kernel",
                                                                             "tirx.tvm_call_packed"):
            calls.append(node)

    _walk(host.body, visit)
    out = []
    for c in calls:
        kname = str(c.args[0].value)
        if kname.startswith("__tvm"):                  # runtime bookkeeping (set device), not a kernel
            continue
        lp = [str(x) for x in (c.attrs.launch_params if hasattr(c, "attrs") and c.attrs is not None
                               and hasattr(c.attrs, "launch_params") else [])]
        rest = list(c.args[1:])
        nlp = len(lp)
        kargs, ext = (rest[:len(rest) - nlp], rest[len(rest) - nlp:]) if nlp else (rest, [])
        args = []
        for a in kargs:
            hit = next((i for d, i in data_of if a.same_as(d) or str(a) == str(d)), None)
            tmp = next((b for b in temps if a.same_as(b.data) or str(a) == str(b.data)), None)
            if hit is not None:
                args.append(["buffer", hit])
            elif tmp is not None:
                args.append(["temp", tmp.name])
            elif isinstance(a, tvm.ir.Call):
                raise LfmcError(f"internal: unresolved buffer argument {a} of {kname}")
            else:
                args.append(["int", expr_to_str(a, lets, names), str(getattr(a, "ty", "int32"))])
        dyn = [t for t in lp if not (t.startswith("blockIdx") or t.startswith("threadIdx"))]
        if dyn:
            raise LfmcError(f"internal: {kname} needs launch parameters {dyn} (dynamic shared memory) that lfmc's "
                            "drivers do not pass")
        grid, block = ["1", "1", "1"], ["1", "1", "1"]
        for tag, e in zip(lp, ext):
            axis = "xyz".index(tag[-1])
            (grid if tag.startswith("blockIdx") else block)[axis] = expr_to_str(e, lets, names)
        out.append({"function": kname, "args": args, "grid": grid, "block": block})
    tdecl = {}
    for b in temps:
        size = "1"
        for d in b.shape:
            size = f"({size} * {expr_to_str(d, lets, names)})"
        tdecl[b.name] = {"dtype": str(b.dtype), "elems": size}
    return {"params": len(params), "shape_vars": shape_vars, "scalars": scalar_params, "temps": tdecl,
            "launches": out}


def build_device(funcs: dict[str, tirx.PrimFunc], target: tvm.target.Target, threads: int = 64,
                 log=None) -> tuple[str, dict[str, Any], bytes | None]:
    """Schedule and compile ``funcs`` (name -> shared kernel) for a GPU ``target`` as one device module.
    Returns (device source, launch table per kernel name, the device binary where the family has one:
    the ROCm code object)."""
    from tvm.tirx.build import codegen_build, split_host_device_mods

    scheduled = {}
    for i, (name, f) in enumerate(sorted(funcs.items()), 1):
        try:
            scheduled[name] = schedule(f, target, threads).with_attr("global_symbol", name)
        except Exception as e:                     # noqa: BLE001
            raise LfmcError(f"kernel {name}: no GPU schedule for {target.kind.name} ({type(e).__name__}: {e})")
        if log:
            log(f"scheduled {i}/{len(funcs)} {name}")
    mod = tvm.IRModule(scheduled)
    host_t = target.host if target.host is not None else tvm.target.Target("llvm")
    mod = tirx.transform.BindTarget(target.with_host(host_t))(mod)
    pipeline, _, fin_dev = tvm.tirx.get_tir_pipeline("s_tir")
    try:
        mod = pipeline(mod)
    except Exception as e:                         # noqa: BLE001
        raise LfmcError(f"TVM lowering for {target.kind.name} failed: {type(e).__name__}: {e}") from None
    host, devs = split_host_device_mods(mod)
    if len(devs) != 1:
        raise LfmcError(f"internal: expected one device module for {target.kind.name}, got {len(devs)}")
    (dt, dmod), = devs.items()
    dmod = fin_dev()(dmod)
    if dt.kind.name == "rocm":
        source, binary = _build_rocm(dmod, dt)
    else:
        rt = codegen_build(dmod, dt)
        source, binary = rt.inspect_source(), None
    table = {}
    for gv, hf in host.functions.items():
        name = str(hf.attrs["global_symbol"]).removeprefix("__tvm_ffi_")
        if name in funcs:
            table[name] = _launches(hf, funcs[name])
    missing = sorted(set(funcs) - set(table))
    if missing:
        raise LfmcError(f"internal: no host entry for {missing[:3]}")
    return source, table, binary


def _build_rocm(dmod, target) -> tuple[str, bytes]:
    """AMDGPU assembly and the linked HSA code object (hsaco). TVM links the object through a Python callback
    (ld.lld from Debian's lld-22, device libraries from rocm-device-libs); lfmc wraps it to keep the bytes."""
    import os
    import shutil

    from tvm.support import rocm as tvm_rocm
    from tvm.tirx.build import codegen_build

    libdir = "/usr/lib/x86_64-linux-gnu"
    if "ROCM_PATH" not in os.environ and os.path.isdir(os.path.join(libdir, "amdgcn")):
        os.environ["ROCM_PATH"] = libdir                # Debian's rocm-device-libs layout
    if not any(shutil.which(f"ld.lld-{v}") for v in range(17, 30)) and not shutil.which("ld.lld"):
        raise LfmcError("ROCm code objects need the LLVM linker: apt install lld-22 (lld 14 fails with "
                        "'unknown abi version')")
    kept: list[bytes] = []

    def link(obj_bin):
        out = tvm_rocm.callback_rocm_link(obj_bin)
        kept.append(bytes(out))
        return out

    tvm.register_global_func("tvm_callback_rocm_link", link, override=True)
    try:
        rt = codegen_build(dmod, target)
    except Exception as e:                         # noqa: BLE001
        raise LfmcError(f"ROCm code generation failed ({type(e).__name__}: {str(e)[:500]}); it needs Debian's "
                        "lld-22 and rocm-device-libs") from None
    finally:
        tvm.register_global_func("tvm_callback_rocm_link", tvm_rocm.callback_rocm_link, override=True)
    if not kept:
        raise LfmcError("internal: TVM produced no ROCm code object")
    return rt.inspect_source("asm"), kept[-1]


def cached_build_device(funcs: dict[str, tirx.PrimFunc], target: tvm.target.Target, threads: int):
    """:func:`build_device` behind the build cache (:mod:`lfmc.targets.cache`, kind ``device``), keyed by the
    kernels' TIR, the target and the TVM and lfmc versions: code generation for some targets (Metal) is slow,
    and the same kernels recur across models and compiles."""
    import json

    from .. import cache

    parts = [f"device {TABLE_FORMAT}", cache.versions(), cache.target_key(target), str(threads)]
    for name in sorted(funcs):
        parts += [name, funcs[name].script()]
    key = cache.cache_key(*parts)
    meta = cache.get("device", key, ".json")
    if meta is not None:
        try:
            c = json.loads(meta)
            binary = cache.get("device", key, ".bin") if c.get("binary") else None
            if not c.get("binary") or binary is not None:
                return c["source"], c["table"], binary
        except (ValueError, KeyError, TypeError):
            pass                                       # a damaged entry: rebuild it
    source, table, binary = build_device(funcs, target, threads)
    entry = {} if binary is None else {".bin": binary}
    entry[".json"] = json.dumps({"source": source, "table": table, "binary": binary is not None}).encode()
    cache.put("device", key, entry)                    # .bin first: a .json is only ever beside its binary
    cache.trim("device")
    return source, table, binary


def gpu_knobs(profile) -> dict[str, Any]:
    """The GPU families' knobs for ``profile`` (see :func:`lfmc.targets.knobs.gpu_knobs`)."""
    from ..knobs import gpu_knobs as knobs

    return knobs(profile.max_threads)


def build_gpu(kernels: dict, profile, out_dir, progress=None, log=None) -> dict[str, str]:
    """Compile every kernel of a plan for a GPU ``profile`` into ``kernels/device.json`` (device source + launch
    table, what the opencl / cuda drivers load) and, where the family has one, the device's own binary form
    beside it (``device.metal`` source, ``device.hsaco`` for ROCm). Returns kernel name -> library file."""
    import json
    from pathlib import Path

    target = profile.target()
    funcs = {}
    for i, (name, spec) in enumerate(sorted(kernels.items()), 1):
        funcs[name] = spec.build(name)
        if progress:
            progress(i, 2 * len(kernels), name)
    source, table, binary = cached_build_device(funcs, target, gpu_knobs(profile)["decode"].threads)
    if progress:
        progress(2 * len(kernels), 2 * len(kernels), "device code")
    d = Path(out_dir) / "kernels"
    d.mkdir(exist_ok=True)
    lib = {"api": profile.family, "target": str(target.kind.name), "profile": profile.name, "source": source,
           "table": table}
    (d / "device.json").write_text(json.dumps(lib, sort_keys=True))
    files = {name: "kernels/device.json" for name in kernels}
    if profile.family == "metal":
        (d / "device.metal").write_text(source)                 # what Xcode / xcrun metal compiles on a Mac
        files["#device-source"] = "kernels/device.metal"
    if binary is not None:
        (d / "device.hsaco").write_bytes(binary)                # what hipModuleLoad takes on an AMD GPU
        files["#device-binary"] = "kernels/device.hsaco"
    return files
