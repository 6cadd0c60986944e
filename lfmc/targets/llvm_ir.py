"""LLVM intrinsics that TVM cannot call directly, substituted in the LLVM IR of a compiled kernel.

TVM 0.27 gives ``bfloat16`` values the LLVM type ``i16`` (and legalizes bf16 arithmetic to float32), so an
intrinsic whose operands are ``<N x bfloat>`` (x86 ``vdpbf16ps``, Arm ``bfmmla``) fails LLVM's verifier when
called with ``T.call_llvm_pure_intrin``. Kernels call a placeholder instead (:func:`placeholder`): an integer
intrinsic of the same operand widths and shape (acc + pairwise products per 32-bit lane) that no kernel uses for
itself, so that LLVM optimizes the kernel as it would the real one (a pure intrinsic: the register tile stays in
registers; an opaque external call would pin it in memory). :func:`substitute` rewrites each placeholder call in
the module's optimized LLVM IR into bitcasts around the real intrinsic, and :func:`rebuild` turns that IR back into
a TVM module, which exports like any other (one ``.so`` per kernel)."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

# placeholder -> (intrinsic, its return type, its operand types); the placeholder's own types are integer
# vectors of the same widths (what TIR passes)
INTRINSICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # vpdpwssd (int16 pairs into int32 lanes) stands for vdpbf16ps (bf16 pairs into float32 lanes)
    "llvm.x86.avx512.vpdpwssd.512": ("llvm.x86.avx512bf16.dpbf16ps.512", "<16 x float>",
                                     ("<16 x float>", "<32 x bfloat>", "<32 x bfloat>")),
    # ummla (a 2x8 by 8x2 uint8 product into 2x2 int32) stands for bfmmla (2x4 by 4x2 bf16 into 2x2 float32)
    "llvm.aarch64.neon.ummla.v4i32.v16i8": ("llvm.aarch64.neon.bfmmla", "<4 x float>",
                                            ("<4 x float>", "<8 x bfloat>", "<8 x bfloat>")),
}


# AMX: kernels call these external functions by value (R x 16 accumulator, R x K activation tile, K/pair x 64-byte
# weight tile, as vectors of the tiles' bytes laid row after row); :func:`substitute` turns each call into
# casts to tile registers around the ``.internal`` intrinsic, which LLVM's AMX lowering turns into tileloadd /
# tdp* / tilestored with the tile shapes the call's vector widths give (a load feeding a cast becomes the tileloadd)
AMX_INT8 = "lfmc_amx_tdpbusd"           # int32 x 16R, uint8 x 32R, int8 x 512 -> int32 x 16R
AMX_BF16 = "lfmc_amx_tdpbf16ps"         # float32 x 16R, int8 x 64R (R x 32 bf16), int8 x 1024 (16 pairs x 16) -> float32 x 16R
_AMX = {AMX_INT8: "llvm.x86.tdpbusd.internal", AMX_BF16: "llvm.x86.tdpbf16ps.internal"}


def placeholder(name: str, dtype: str, *args):
    """A TIR call of placeholder ``name`` (a key of :data:`INTRINSICS`) returning ``dtype`` (integer lanes)."""
    from tvm.script import tirx as T

    if name not in INTRINSICS:
        raise KeyError(f"no intrinsic placeholder {name!r}")
    return T.call_llvm_pure_intrin(dtype, name, *args)


def _split_args(s: str) -> list[str]:
    """Top-level comma-separated operands of an LLVM call (constant vectors hold commas inside <...>)."""
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch in "<[({":
            depth += 1
        elif ch in ">])}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


_CALL = re.compile(r"^(\s*)(%[\w.]+) = (?:tail |notail |musttail )?call (<[^>]+>) @([\w.]+)\((.*)\)(.*)$")


def _vtype(op: str) -> tuple[str, int, str]:
    """(type, lanes, value) of a vector operand such as ``<64 x i32> %12``."""
    ty, val = op.split("> ", 1)
    return ty + ">", int(ty[1:].split(" x ")[0]), val.strip()


def _amx_call(ind: str, res: str, name: str, args: str, n: int) -> tuple[list[str], set[str]]:
    """The AMX lines for one call of an :data:`AMX_INT8` / :data:`AMX_BF16` stand-in, and what they declare."""
    (ct, cl, c), (at, al, a), (bt, bl, b) = (_vtype(op) for op in _split_args(args))
    rows = cl // 16
    ka = al // rows                                   # bytes of an activation tile row: K (int8) or 2K (bf16)
    if bl != (ka // 4) * 64:
        raise ValueError(f"{name}: a {bt} weight tile does not match a {rows} x {ka}-byte activation tile")
    tag, decl = f"%lfmc.amx{n}", set()

    def cast(v: str, ty: str, i: str) -> str:
        fn = f"llvm.x86.cast.vector.to.tile.{_mangle(ty)}"
        decl.add(f"declare x86_amx @{fn}({ty})")
        return f"{ind}{tag}.{i} = call x86_amx @{fn}({ty} {v})"

    back = f"llvm.x86.cast.tile.to.vector.{_mangle(ct)}"
    decl |= {f"declare x86_amx @{_AMX[name]}(i16, i16, i16, x86_amx, x86_amx, x86_amx)",
             f"declare {ct} @{back}(x86_amx)"}
    lines = [cast(c, ct, "c"), cast(a, at, "a"), cast(b, bt, "b"),
             f"{ind}{tag}.r = call x86_amx @{_AMX[name]}(i16 {rows}, i16 64, i16 {ka}, x86_amx {tag}.c, "
             f"x86_amx {tag}.a, x86_amx {tag}.b)",
             f"{ind}{res} = call {ct} @{back}(x86_amx {tag}.r)"]
    return lines, decl


def _mangle(ty: str) -> str:
    """LLVM's overload suffix of a vector type: ``<64 x i32>`` -> ``v64i32``, ``<64 x float>`` -> ``v64f32``."""
    lanes, elem = ty.strip("<>").split(" x ")
    return f"v{lanes}" + {"float": "f32", "half": "f16"}.get(elem, elem)


def substitute(ll: str) -> str:
    """``ll`` with every placeholder call replaced by its intrinsic between bitcasts, and every AMX stand-in
    call by tile casts around its AMX intrinsic."""
    lines, n, used, decls = [], 0, set(), set()
    for line in ll.splitlines():
        m = _CALL.match(line)
        if m and m.group(4) in _AMX:
            more, d = _amx_call(m.group(1), m.group(2), m.group(4), m.group(5), n)
            lines += more
            decls |= d
            n += 1
        elif line.startswith("declare") and any(f"@{p}(" in line for p in _AMX):
            continue
        elif m and m.group(4) in INTRINSICS:
            ind, res, rtype, name, args, tail = m.groups()
            intr, ret, types = INTRINSICS[name]
            ops = _split_args(args)
            if len(ops) != len(types):
                raise ValueError(f"{name}: {len(ops)} operands, the intrinsic takes {len(types)}")
            tag = f"%lfmc.{n}"
            conv = []
            for i, (op, want) in enumerate(zip(ops, types)):
                have, val = op.split(" ", 1) if not op.startswith("<") else op.split("> ", 1)
                have = have + ">" if op.startswith("<") else have
                lines.append(f"{ind}{tag}.{i} = bitcast {have} {val} to {want}")
                conv.append(f"{want} {tag}.{i}")
            lines.append(f"{ind}{tag}.r = call {ret} @{intr}({', '.join(conv)})")
            lines.append(f"{ind}{res} = bitcast {ret} {tag}.r to {rtype}")
            n += 1
            used.add(name)
        elif line.startswith("declare") and any(f"@{p}(" in line for p in INTRINSICS):
            continue
        else:
            lines.append(line)
    for name in sorted(used):
        intr, ret, types = INTRINSICS[name]
        lines.append(f"declare {ret} @{intr}({', '.join(types)})")
    return "\n".join(lines + sorted(decls)) + "\n"


# the kernel makers whose kernels may call a placeholder (the build substitutes their IR; others are left alone)
MAKERS = frozenset({"make_matmul_bf16", "make_peak"})


def needs_substitution(spec: Any) -> bool:
    """Whether the kernel of ``spec`` (a :class:`lfmc.targets.lower.KernelSpec`) goes through :func:`rebuild`: the
    bf16 and peak kernels, and int8 ones of the AMX family."""
    name = getattr(spec, "maker_name", "")
    kn = getattr(spec, "knobs", None)
    return name in MAKERS or (name == "make_matmul_a8" and kn is not None and kn.dot == "amx")


def rebuild(lib: Any) -> Any:
    """The TVM module of ``lib`` (``tvm.compile``'s result) with its placeholders substituted: its LLVM IR
    rewritten and loaded back (TVM's ``.ll`` loader compiles it for the triple and CPU the IR names)."""
    import tvm

    text = substitute(lib.mod.inspect_source("ll"))
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "kernel.ll"
        p.write_text(text)
        return tvm.runtime.load_module(str(p))
