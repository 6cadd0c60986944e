"""MLIR export: the lfm dialect form and the linalg form parse and verify with the upstream MLIR bindings; the
linalg form compiled by IREE (llvm-cpu) gives the interpreter's logits on several prompt lengths."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lfmc.frontend import import_preset
from lfmc.ir.errors import LfmcError
from lfmc.ir.interp import Interpreter
from lfmc.ir.model import save_model
from lfmc.passes.quantize import quantize_weights

pytest.importorskip("iree.compiler")
from lfmc.targets.mlir import IreeForward, compile_iree, export_mlir, verify  # noqa: E402

RTOL = 1e-5            # of max(1, |logit|): float32 accumulation order differs between IREE and numpy


@pytest.mark.parametrize("name", ["dense-a", "moe-a"])
def test_dialect_form_parses_verifies_and_carries_the_ir(tiny_models, name):
    g = tiny_models[name].graph
    text = export_mlir(g)
    assert verify(text) == text                        # MLIR's own printing, stable
    ops = [ln for ln in text.splitlines() if ' = "lfm.' in ln]
    assert len(ops) == len(g.nodes)
    for n, ln in zip(g.nodes, ops):
        assert f'"lfm.{n.op}"' in ln and f'lfm.node = "{n.name}"' in ln
        if n.liv is not None:
            assert f'class = "{n.liv.cls}"' in ln
            for gate, gt in n.liv.featurizer.items():
                assert f'proj = "{gt.proj}"' in ln and f'act = "{gt.act}"' in ln
        for k, t in n.state.items():
            assert f'{k} = "{t}"' in ln
    for p in g.params():
        assert f'lfm.param = "{p}"' in text


@pytest.mark.parametrize("name", ["dense-a", "dense-b", "moe-a", "moe-b"])
def test_linalg_form_through_iree_equals_interpreter(tiny_models, name):
    m = tiny_models[name]
    text = export_mlir(m.graph, "linalg")
    assert "lfm." not in text.replace("lfm.param", "").replace("lfm.graph", "")
    dialects = {tok.split(".")[0] for ln in text.splitlines() for tok in ln.split()
                if "." in tok and tok.split(".")[0] in ("linalg", "arith", "math", "tensor", "func", "scf")}
    assert dialects <= {"linalg", "arith", "math", "tensor", "func"}
    fwd = IreeForward(compile_iree(text), m.graph, m.weights)
    rng = np.random.default_rng(5)
    V = m.provenance["config"]["vocab_size"]
    for T in (1, 6, 17):
        toks = rng.integers(0, V, T)
        it = Interpreter(m.graph, m.weights)
        ref = it.run(toks, it.new_state())
        got = fwd(toks)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= RTOL * max(1.0, np.abs(ref).max()), (name, T)


def test_unsupported_inputs_are_clear_errors(tiny_models):
    hybrid = import_preset("lfm2-hybrid-tiny")
    assert '"lfm.linear_recurrence"' in export_mlir(hybrid.graph)       # the dialect form has every op
    with pytest.raises(LfmcError, match="does not lower linear_recurrence"):
        export_mlir(hybrid.graph, "linalg")
    q = quantize_weights.run(tiny_models["dense-a"], {"quant": "q8"})
    with pytest.raises(LfmcError, match="needs float32 weights"):
        export_mlir(q.graph, "linalg")
    with pytest.raises(LfmcError, match="unknown --lower"):
        export_mlir(tiny_models["dense-a"].graph, "spirv")
    with pytest.raises(LfmcError, match="does not parse"):
        verify("func.func @f( {")


def test_missing_bindings_say_how_to_install(tiny_models, monkeypatch):
    monkeypatch.setitem(sys.modules, "iree.compiler", None)
    with pytest.raises(LfmcError, match=r"pip install 'lfmc\[mlir\]'"):
        export_mlir(tiny_models["dense-a"].graph)


def test_cli_export_mlir(tiny_models, tmp_path):
    save_model(tiny_models["moe-b"], tmp_path / "m.lfm")
    r = subprocess.run([sys.executable, "-m", "lfmc", "export-mlir", str(tmp_path / "m.lfm"), "-o",
                        str(tmp_path / "m.mlir")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "lfm dialect ops" in r.stdout and verify((tmp_path / "m.mlir").read_text())
    r = subprocess.run([sys.executable, "-m", "lfmc", "export-mlir", str(tmp_path / "m.lfm"), "--lower", "linalg",
                        "--check", "-o", str(tmp_path / "l.mlir")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "IREE agrees with the interpreter" in r.stdout
    assert "linalg.generic" in (tmp_path / "l.mlir").read_text()
    r = subprocess.run([sys.executable, "-m", "lfmc", "export-mlir", "lfm2-tiny", "--check"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 2 and "add --lower linalg" in r.stderr


@pytest.mark.parametrize("name", ["lfm3-a", "lfm3-b"])
def test_lfm3_both_forms(lfm3_models, name):
    """LFM3's window, gate and partial RoPE: the dialect form carries them as attributes and state (a ring), the
    linalg form through IREE equals the interpreter on prompts longer than the window."""
    m = lfm3_models[name]
    text = export_mlir(m.graph)
    assert verify(text) == text
    att = [ln for ln in text.splitlines() if '"lfm.attention"' in ln]
    assert any("window = " in ln and 'k = "f32[ring' in ln for ln in att)
    assert any("rope_angles = " in ln for ln in att)
    assert all(("g_proj" in ln) == m.provenance["config"]["use_attention_gate"] for ln in att)
    fwd = IreeForward(compile_iree(export_mlir(m.graph, "linalg")), m.graph, m.weights)
    for T in (1, 9, 30):
        toks = np.random.default_rng(T).integers(0, 256, T)
        it = Interpreter(m.graph, m.weights)
        ref = it.run(toks, it.new_state())
        assert np.abs(fwd(toks) - ref).max() <= RTOL * max(1.0, np.abs(ref).max()), (name, T)
