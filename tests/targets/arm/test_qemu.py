"""Arm CPU artifacts executed for real under ``qemu-aarch64 -cpu max`` (``make arm-env`` sets it up; ``make
test-arm`` runs the whole matrix): the snapdragon-8gen3:cpu / snapdragon-8elite:cpu builds (NEON float kernels, int8
kernels with ``smmla`` prefill tiles and ``sdot`` decode rows) loaded by the runtime's ``cpu`` driver in an aarch64 Python. Teacher-forced with the
interpreter's greedy tokens, each step's argmax is the interpreter's token (greedy tokens equal) and the logits stay
within RTOL of the logit scale (float and weight-only), 2e-2 with bf16 activations and 8e-2 with int8 ones (an activation within float32
rounding of a code boundary may round the other way: tests/targets/test_lfm3_host.py says more)."""
from __future__ import annotations

import numpy as np
import pytest

from lfmc.check import RTOL
from lfmc.compile import compile_model
from lfmc.frontend import import_preset
from lfmc.ir import Interpreter
from lfmc.options import CompileOptions
from lfmc.passes.pipeline import run_pipeline
from tests.helpers import interpreter_greedy
from tests.targets.arm import qemu
from tests.targets.test_lfm3_host import QUANT_PASSES

pytestmark = pytest.mark.skipif(qemu.missing() is not None, reason=qemu.missing() or "")

PRECISIONS = {"f32": {"quant": "none"}, "q8": {"quant": "q8"}, "q4": {"quant": "q4g32"},
              "w8a8": {"quant": "q8", "act_quant": "i8"}, "w4a8": {"quant": "q4g32", "act_quant": "i8"},
              "bf16a": {"quant": "none", "dtype": "bf16", "act_quant": "bf16"},
              "kv8": {"quant": "none", "kv_dtype": "i8"}}
TARGETS = ("snapdragon-8gen3:cpu", "snapdragon-8elite:cpu")
PROMPTS = (1, 19)          # one token; two prefill chunks of 16
STEPS = 8


def _models(tiny_models) -> dict:
    hy = import_preset("lfm2-hybrid-tiny", weights=True, seed=2, std=0.25)
    return {"dense": tiny_models["dense-a"], "moe": tiny_models["moe-b"], "hybrid": hy}


def _check(cases: list[tuple], root, cpu: str = "max", fallbacks: bool = False) -> list[str]:
    """Compile each (label, model, precision, target), run all under qemu's ``cpu`` in one process, compare with
    the interpreter of the model quantized as the compile quantizes it; ``fallbacks``: whether the runtime must have
    run ISA-variant fallbacks (else none). Returns one line per case (docs/targets/arm.md)."""
    jobs, refs = [], []
    for label, m, prec, target in cases:
        opts = PRECISIONS[prec]
        art = compile_model(m, root / f"{label}-{prec}-{target.split(':')[0]}", target=target, max_batch=1,
                            max_context=64, prefill_chunk=16, **opts)
        q = run_pipeline(m, QUANT_PASSES, CompileOptions.from_kwargs(**opts).pass_options())
        it = Interpreter(q.graph, q.weights)
        vocab = m.provenance["config"]["vocab_size"]
        for plen in PROMPTS:
            prompt = (np.arange(plen) * 37 % vocab + 3).tolist()
            toks = interpreter_greedy(it, prompt, STEPS)
            st = it.new_state()
            ref = [it.run(prompt, st)[-1]] + [it.run([t], st)[-1] for t in toks[:-1]]
            jobs.append({"artifact": str(art), "prompt": prompt, "forced": toks[:-1]})
            refs.append((label, prec, target, plen, toks, np.stack(ref)))
    got = qemu.run_jobs(jobs, root / "qemu", cpu=cpu)
    lines = []
    for (label, prec, target, plen, toks, ref), res in zip(refs, got):
        assert res["machine"] == "aarch64" and res.get("driver") == "cpu", res
        assert (res["fallbacks"] > 0) == (fallbacks and prec in ("w8a8", "w4a8", "bf16a")), res
        lg = res["logits"]
        err = float(np.abs(lg - ref).max() / max(1.0, np.abs(ref).max()))
        tol = 8e-2 if "a8" in prec else 2e-2 if prec == "bf16a" else RTOL
        assert lg.argmax(-1).tolist() == toks, (label, prec, target, plen, lg.argmax(-1).tolist(), toks)
        assert err <= tol, (label, prec, target, plen, err)
        lines.append(f"| {label} | {prec} | {target} | {plen} | {' '.join(map(str, toks))} | yes | {err:.1e} |")
    return lines


def test_arm_smoke_dense_f32_and_w8a8(tiny_models, tmp_path):
    """The default suite's Arm check: a dense model at f32, W8A8 (the sdot kernels) and with an int8 KV cache on
    the Snapdragon 8 Gen 3 build, executed."""
    m = _models(tiny_models)["dense"]
    _check([("dense", m, p, TARGETS[0]) for p in ("f32", "w8a8", "kv8")], tmp_path)


def test_arm_isa_variants_on_a_core_without_i8mm_and_bf16(tiny_models, tmp_path):
    """The same Snapdragon 8 Gen 3 builds on an emulated Cortex-A76 (dotprod, no i8mm or bf16, as its hwcaps say):
    the runtime runs the sdot / FMA fallbacks of the smmla / bfmmla kernels, tokens still the interpreter's."""
    m = _models(tiny_models)["dense"]
    _check([("dense", m, p, TARGETS[0]) for p in ("w8a8", "bf16a")], tmp_path, cpu="cortex-a76", fallbacks=True)


def test_arm_artifact_refused_by_name_on_a_cpu_without_dotprod(tiny_models, tmp_path):
    """The same W8A8 build on an emulated Cortex-A53 (ARMv8.0: no dotprod, i8mm or bf16, as its hwcaps say) is
    refused when loaded, naming the feature, instead of dying of SIGILL in an sdot."""
    m = _models(tiny_models)["dense"]
    art = compile_model(m, tmp_path / "a", target=TARGETS[0], max_batch=1, max_context=32, prefill_chunk=16,
                        quant="q8", act_quant="i8")
    (res,) = qemu.run_jobs([{"artifact": str(art), "prompt": [1, 2], "forced": []}], tmp_path / "q", cpu="cortex-a53")
    assert "compiled for CPUs with DOTPROD" in res["error"] and "this CPU lacks it" in res["error"], res


@pytest.mark.slow
def test_arm_every_model_precision_and_target(tiny_models, tmp_path):
    """Dense, MoE and hybrid x f32, q8, q4, W8A8, W4A8, bf16 weights and activations x both Snapdragon CPU builds
    (``make test-arm``)."""
    ms = _models(tiny_models)
    lines = _check([(k, m, p, t) for t in TARGETS for k, m in ms.items() for p in PRECISIONS], tmp_path)
    print("\n".join(lines))
