"""The ONNX frontend: models exported by torch.onnx.export (dynamo) lift to the same IR and weights as the torch
frontend gives, the ONNX graph's own numbers (onnx.reference) equal the interpreter's, and bad files are clear
errors that name the ONNX nodes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lfmc.check import compare
from lfmc.frontend import import_source, import_torch_model
from lfmc.frontend.config import graph_from_config
from lfmc.frontend.onnx import OnnxLiftError, import_onnx
from lfmc.frontend.reference import build_hf_model
from lfmc.ir.errors import LfmcError
from lfmc.ir.interp import Interpreter
from lfmc.ir.text import print_graph
from lfmc.ir.weights import random_weights
from tests.configs import ALL_CONFIGS, INIT_STD

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

SLOW = pytest.mark.slow                                # an export takes ~8 s: two of the four run by default
NAMES = ["dense-a", pytest.param("dense-b", marks=SLOW),  # tied / untied + biases
         "moe-a", pytest.param("moe-b", marks=SLOW)]      # norm / no norm, scaled MoE
T = 8


def export(model, path, T: int = T) -> None:
    ids = torch.randint(0, model.config.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
    torch.onnx.export(model, (ids,), kwargs={"use_cache": False}, dynamo=True, f=str(path), verbose=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (torch model, path of its ONNX export); random weights N(0, 0.25); exported on first use."""
    d = tmp_path_factory.mktemp("onnx")
    out: dict = {}

    def get(name: str):
        if name not in out:
            cfg = ALL_CONFIGS[name]
            model = build_hf_model(cfg, random_weights(graph_from_config(cfg), seed=3, std=INIT_STD))
            export(model, d / f"{name}.onnx")
            out[name] = (model, d / f"{name}.onnx")
        return out[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_same_ir_and_weights_as_torch(exported, name):
    model, path = exported(name)
    a, b = import_torch_model(model, "m"), import_onnx(path, "m")
    assert print_graph(b.graph) == print_graph(a.graph)
    assert set(b.weights) == set(a.weights)
    for k in a.weights:
        assert np.array_equal(a.weights[k], b.weights[k]), k
    # the config rebuilt from the graph describes the same model
    assert print_graph(graph_from_config(b.provenance["config"], "m")) == print_graph(a.graph)


@pytest.mark.parametrize("name", NAMES)
def test_onnx_numbers_equal_interpreter(exported, name):
    """The ONNX graph run by onnx's reference evaluator gives the interpreter's logits (1e-5 of the scale)."""
    from onnx.reference import ReferenceEvaluator

    _, path = exported(name)
    m = import_onnx(path)
    ids = np.random.default_rng(7).integers(0, m.provenance["config"]["vocab_size"], (1, T)).astype(np.int64)
    ref = ReferenceEvaluator(str(path)).run(None, {onnx.load(str(path)).graph.input[0].name: ids})[0][0]
    it = Interpreter(m.graph, m.weights)
    got = it.run(ids[0], it.new_state())
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("name", ["dense-a", pytest.param("dense-b", marks=SLOW), "moe-a"])
def test_onnx_import_matches_transformers_with_decode(exported, name):
    """Prefill then greedy decode: the ONNX-imported model (config rebuilt from the graph) against transformers."""
    _, path = exported(name)
    res = compare(import_onnx(path), prefill_lens=(1, 6), decode_steps=4)
    assert res.ok, res.to_json()


def test_cli_import_onnx_and_sidecar_config(exported, tmp_path):
    model, path = exported("dense-a")
    d = tmp_path / "ckpt"
    d.mkdir()
    for f in path.parent.glob(path.name + "*"):          # the graph and its external weights (NAME.onnx.data)
        (d / f.name).write_bytes(f.read_bytes())
    cfg = dict(ALL_CONFIGS["dense-a"]) | {"eos_token_id": 5, "max_position_embeddings": 512}
    (d / "config.json").write_text(json.dumps(cfg))
    r = subprocess.run([sys.executable, "-m", "lfmc", "import", str(d / path.name), "-o", str(tmp_path / "m.lfm")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    from lfmc.ir.model import load_model

    m = load_model(tmp_path / "m.lfm")
    assert m.provenance["source"] == "onnx"
    assert m.provenance["config"]["eos_token_id"] == 5 and m.provenance["config"]["max_position_embeddings"] == 512
    assert print_graph(m.graph) == print_graph(import_torch_model(model, path.stem).graph)
    # a config.json for a different model is refused, naming the difference
    (d / "config.json").write_text(json.dumps(cfg | {"conv_L_cache": 2}))
    with pytest.raises(LfmcError, match="describes a different model"):
        import_onnx(d / path.name)


def _tampered(path, tmp_path, edit) -> str:
    mo = onnx.load(str(path))
    edit(mo)
    out = tmp_path / "bad.onnx"
    onnx.save(mo, str(out))
    return str(out)


def test_unrecognized_subgraph_names_the_nodes(exported, tmp_path):
    _, path = exported("dense-a")

    def tanh_gate(mo):                     # silu(w1 x) -> w1 x * tanh(w1 x) in layer 1's MLP
        n = next(n for n in mo.graph.node if n.op_type == "Sigmoid"
                 and any("model.layers.1.feed_forward" in p.value for p in n.metadata_props))
        n.op_type = "Tanh"
        n.name = "my_tanh"

    with pytest.raises(OnnxLiftError) as e:
        import_onnx(_tampered(path, tmp_path, tanh_gate))
    assert "model.layers.1.feed_forward" in str(e.value) and "my_tanh (Tanh)" in str(e.value)

    def rope_scaled(mo):                   # a non-causal mask
        import onnx.numpy_helper as nh

        for i, t in enumerate(mo.graph.initializer):
            a = nh.to_array(t)
            if a.ndim == 4 and a.shape[-1] == a.shape[-2] == T and a.min() < -1e30:
                mo.graph.initializer[i].CopyFrom(nh.from_array(np.zeros_like(a), t.name))

    with pytest.raises(OnnxLiftError, match="mask is not causal"):
        import_onnx(_tampered(path, tmp_path, rope_scaled))

    def split_in_four(mo):                 # the short conv's in_proj split into four outputs
        n = next(n for n in mo.graph.node if n.op_type == "Split")     # the first conv layer's B, C, x split
        n.output.append(n.output[-1] + "_extra")

    with pytest.raises(OnnxLiftError) as e:
        import_onnx(_tampered(path, tmp_path, split_in_four))
    assert "in_proj is split into 4, expected 3 (B, C, x)" in str(e.value)    # the count, not "{len(...)}"


def test_bad_files_are_clear_errors(exported, tmp_path):
    _, path = exported("dense-a")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07not a protobuf" * 3)
    with pytest.raises(LfmcError, match="not a readable ONNX model"):
        import_onnx(junk)
    with pytest.raises(LfmcError, match="no such ONNX file"):
        import_onnx(tmp_path / "missing.onnx")

    def strip(mo):                         # no module scopes, node names scrambled: lifting is by data flow
        for k, n in enumerate(mo.graph.node):
            del n.metadata_props[:]
            n.name = f"n{len(mo.graph.node) - k}"

    assert print_graph(import_onnx(_tampered(path, tmp_path, strip), "m").graph) == \
        print_graph(import_onnx(path, "m").graph)

    def no_ids(mo):                        # the token ids input renamed to a float
        mo.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT

    with pytest.raises(LfmcError, match="expected one token-id input"):
        import_onnx(_tampered(path, tmp_path, no_ids))
