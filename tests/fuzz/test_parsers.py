"""Property-based fuzzing (hypothesis) of everything that reads untrusted bytes: the IR parser, saved models,
the artifact loader (manifest, parameters, tokenizer), the ONNX and the GGUF importers. The property: no crash, no hang,
only lfmc's own error types (LfmcError, RuntimeLoadError, EngineError)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from lfmc.frontend.config import graph_from_config  # noqa: E402
from lfmc.ir.errors import LfmcError  # noqa: E402
from lfmc.ir.text import parse_graph, print_graph  # noqa: E402
from lfmc.ir.verify import verify  # noqa: E402
from lfmc.runtime import Engine  # noqa: E402
from lfmc.runtime.artifact import load_manifest  # noqa: E402
from lfmc.runtime.errors import EngineError, RuntimeLoadError  # noqa: E402
from lfmc.runtime.verify import verify_artifact  # noqa: E402
from tests.configs import ALL_CONFIGS  # noqa: E402
from tests.fuzz import SCALE  # noqa: E402

OURS = (LfmcError, RuntimeLoadError, EngineError)
FUZZ = settings(max_examples=200 * SCALE, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SLOWER = settings(max_examples=30 * SCALE, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

IR_TEXT = print_graph(graph_from_config(ALL_CONFIGS["moe-a"], "m"))


@st.composite
def mutated(draw, text: str, alphabet: str = "%@{}[](),=:\"'\\\n\x03\t -0123456789.eEabcdefgfTxi\u00e9") -> str:
    """``text`` with a few random edits: deletions, insertions, replacements, duplicated or dropped spans."""
    s = text
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, max(0, len(s) - 1)))
        j = min(len(s), i + draw(st.integers(0, 40)))
        kind = draw(st.sampled_from(["del", "ins", "rep", "dup"]))
        if kind == "del":
            s = s[:i] + s[j:]
        elif kind == "ins":
            s = s[:i] + draw(st.text(alphabet, max_size=8)) + s[i:]
        elif kind == "rep":
            s = s[:i] + draw(st.text(alphabet, min_size=1, max_size=3)) + s[i + 1:]
        else:
            s = s[:j] + s[i:j] + s[j:]
    return s


@FUZZ
@given(st.one_of(mutated(IR_TEXT), st.text(max_size=400)))
def test_ir_parser_only_raises_lfmc_errors(src):
    try:
        g = parse_graph(src)
    except LfmcError:
        return
    try:
        verify(g)
    except LfmcError:
        return
    assert parse_graph(print_graph(g)) is not None                   # what parses and verifies round-trips


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_models):
    from lfmc.ir.model import save_model

    return save_model(tiny_models["dense-c"], tmp_path_factory.mktemp("saved") / "m.lfm")


@SLOWER
@given(data=st.data())
def test_saved_model_files_fuzzed(saved, tmp_path_factory, data):
    from lfmc.ir.model import load_model

    d = tmp_path_factory.mktemp("m") / "m.lfm"
    shutil.copytree(saved, d)
    f = d / data.draw(st.sampled_from(sorted(p.name for p in d.iterdir())))
    raw = bytearray(f.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        if not raw:
            break
        i = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "zero"]))
        if op == "flip":
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del raw[i:]
        else:
            raw[i:i + 8] = bytes(min(8, len(raw) - i))
    f.write_bytes(bytes(raw))
    try:
        load_model(d)
    except LfmcError:
        pass


def _json_value():
    return st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) |
                        st.text(max_size=12), lambda c: st.lists(c, max_size=4) | st.dictionaries(
                            st.text(max_size=8), c, max_size=4), max_leaves=12)


@st.composite
def manifest_edit(draw, manifest: dict):
    """A manifest with one value somewhere replaced, deleted or given a new key."""
    m = json.loads(json.dumps(manifest))
    node = m
    path = []
    for _ in range(draw(st.integers(0, 4))):
        if isinstance(node, dict) and node:
            k = draw(st.sampled_from(sorted(node)))
        elif isinstance(node, list) and node:
            k = draw(st.integers(0, len(node) - 1))
        else:
            break
        path.append(k)
        if not isinstance(node[k], (dict, list)):
            break
        node = node[k]
    parent = m
    for k in path[:-1]:
        parent = parent[k]
    op = draw(st.sampled_from(["set", "del", "add"]))
    if not path:
        m[draw(st.text(max_size=6))] = draw(_json_value())
    elif op == "set":
        parent[path[-1]] = draw(_json_value())
    elif op == "del" and isinstance(parent, dict):
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=6))] = draw(_json_value())
    return m


@pytest.fixture(scope="module")
def manifest(served_artifact):
    return json.loads((Path(served_artifact) / "manifest.json").read_text())


@SLOWER
@given(data=st.data())
def test_manifest_fuzzed(served_artifact, manifest, tmp_path_factory, data):
    """A tampered manifest (hashes of the other files still right): verify and load say what is wrong, or it is
    a harmless change and the engine still runs."""
    d = tmp_path_factory.mktemp("a") / "art"
    shutil.copytree(served_artifact, d)
    m = data.draw(manifest_edit(manifest))
    (d / "manifest.json").write_text(json.dumps(m))
    for fn in (lambda: verify_artifact(d), lambda: load_manifest(d)):
        try:
            fn()
        except OURS:
            pass
    try:
        eng = Engine(d)
    except OURS:
        return
    try:
        s = eng.new_sequence()
        eng.prefill(s, [1, 2, 3])
        eng.decode([s], [4])
    except OURS:
        pass


@SLOWER
@given(data=st.data())
def test_params_and_tokenizer_bytes_fuzzed(served_artifact, tmp_path_factory, data):
    """Corrupted parameters or tokenizer: caught by the hashes; with the hash updated too (a deliberate
    forgery), the loader still fails cleanly on a bad header or tensor table."""
    import hashlib

    d = tmp_path_factory.mktemp("p") / "art"
    shutil.copytree(served_artifact, d)
    f = d / "params.safetensors"
    raw = bytearray(f.read_bytes())
    orig = bytes(raw)
    hdr = int.from_bytes(raw[:8], "little") + 8
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, min(len(raw), hdr + 64) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))          # XOR with a non-zero byte: the byte changes
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(0, len(raw) - 1)):]
    if bytes(raw) == orig:      # two edits of one byte can cancel: then the file is intact and rightly loads
        raw[0] ^= 1
    f.write_bytes(bytes(raw))
    try:
        Engine(d)
        pytest.fail("a corrupted parameter file loaded despite its hash")
    except RuntimeLoadError:
        pass
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["params.safetensors"] = hashlib.sha256(bytes(raw)).hexdigest()
    (d / "manifest.json").write_text(json.dumps(m))
    try:
        Engine(d)
    except OURS:
        pass


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    onnx = pytest.importorskip("onnx")
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from lfmc.frontend.reference import build_hf_model
    from lfmc.ir.weights import random_weights

    cfg = ALL_CONFIGS["moe-b"]
    model = build_hf_model(cfg, random_weights(graph_from_config(cfg), seed=1, std=0.25))
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    torch.onnx.export(model, (torch.ones(1, 6, dtype=torch.long),), kwargs={"use_cache": False}, dynamo=True,
                      f=str(path))
    return onnx.load(str(path))


OPS = ["Add", "Mul", "MatMul", "Sigmoid", "Tanh", "Relu", "Transpose", "Reshape", "Split", "Conv", "Softmax",
       "Identity", "TopK", "Neg", "Foo"]


def _mutate_node(g, n, kind: str, data, ops: list[str]) -> None:
    """The mutations both ONNX fuzzers share: an op renamed, a node dropped, an operand rewired."""
    if kind == "op":
        n.op_type = data.draw(st.sampled_from(ops))
    elif kind == "drop":
        g.node.remove(n)
    elif kind == "input" and n.input:
        n.input[data.draw(st.integers(0, len(n.input) - 1))] = data.draw(
            st.sampled_from([x.name for x in g.initializer] + [o for m in g.node for o in m.output] + ["nope"]))


@SLOWER
@given(data=st.data())
def test_onnx_importer_fuzzed(onnx_model, data):
    from lfmc.frontend.onnx import lift_onnx

    mo = type(onnx_model)()
    mo.CopyFrom(onnx_model)
    g = mo.graph
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["op", "drop", "input", "attr", "init", "scope"]))
        n = g.node[data.draw(st.integers(0, len(g.node) - 1))]
        _mutate_node(g, n, kind, data, OPS)
        if kind == "attr" and n.attribute:
            a = n.attribute[data.draw(st.integers(0, len(n.attribute) - 1))]
            if a.ints:
                a.ints[0] = data.draw(st.integers(-5, 5))
            else:
                a.i = data.draw(st.integers(-5, 5))
        elif kind == "init" and g.initializer:
            t = g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))]
            if t.raw_data:
                t.raw_data = t.raw_data[: data.draw(st.integers(0, len(t.raw_data)))]
        elif kind == "scope" and n.metadata_props:
            n.metadata_props[0].value = data.draw(st.sampled_from(["['', 'model']", "[", "None", "['x', 'y', 'z']"]))
    try:
        lift_onnx(mo, "m")
    except LfmcError:
        pass


@pytest.fixture(scope="module")
def community_model():
    """onnx-community's decoder layout (cache inputs / outputs, ONNX Runtime's fused ops), int4 MatMulNBits."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from lfmc.ir.weights import random_weights
    from tests.onnx_graphs import community_graph

    cfg = ALL_CONFIGS["dense-c"]
    logging.disable(logging.INFO)
    try:
        q = MatMulNBitsQuantizer(community_graph(cfg, random_weights(graph_from_config(cfg), seed=1, std=0.25)),
                                 block_size=32, is_symmetric=True)
        q.process()
    finally:
        logging.disable(logging.NOTSET)
    return q.model.model


@SLOWER
@given(data=st.data())
def test_onnx_community_graph_fuzzed(community_model, data):
    """Renamed nodes and values, reordered or retyped inputs, missing initializers, wrong shapes, changed ops and
    attributes: LfmcError or a lifted graph, never another exception."""
    from lfmc.frontend.onnx import lift_onnx

    mo = type(community_model)()
    mo.CopyFrom(community_model)
    g = mo.graph
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["op", "drop", "input", "attr", "rename", "reorder", "dims", "no_init",
                                          "init_shape"]))
        n = g.node[data.draw(st.integers(0, len(g.node) - 1))]
        _mutate_node(g, n, kind, data, OPS + ["GroupQueryAttention", "MatMulNBits", "SkipSimplifiedLayerNormalization"])
        if kind == "attr" and n.attribute:
            a = n.attribute[data.draw(st.integers(0, len(n.attribute) - 1))]
            if a.type == a.INT:
                a.i = data.draw(st.integers(-5, 70))
            elif a.type == a.FLOAT:
                a.f = data.draw(st.sampled_from([0.0, -1.0, 1e30]))
        elif kind == "rename":                          # a node and its first output renamed consistently
            old, new = n.output[0], "renamed_" + n.output[0]
            n.name = "x"
            for m in g.node:
                for k, i in enumerate(m.input):
                    if i == old:
                        m.input[k] = new
            n.output[0] = new
        elif kind == "reorder":
            ins = list(g.input)
            order = data.draw(st.permutations(range(len(ins))))
            del g.input[:]
            g.input.extend(ins[k] for k in order)
        elif kind == "dims":
            i = g.input[data.draw(st.integers(0, len(g.input) - 1))]
            dims = i.type.tensor_type.shape.dim
            if dims:
                dims[data.draw(st.integers(0, len(dims) - 1))].dim_value = data.draw(st.integers(0, 9))
            else:
                i.type.tensor_type.elem_type = data.draw(st.integers(1, 16))
        elif kind == "no_init" and g.initializer:
            g.initializer.remove(g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))])
        elif kind == "init_shape" and g.initializer:
            t = g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))]
            if t.dims:
                t.dims[0] = max(1, t.dims[0] + data.draw(st.sampled_from([-1, 1])))
    try:
        lift_onnx(mo, "m")
    except LfmcError:
        pass


def test_onnx_community_untouched_still_lifts(community_model):
    from lfmc.frontend.onnx import lift_onnx

    g, w = lift_onnx(community_model, "m")
    assert sum(n.op == "attention" for n in g.nodes) == 1 and all(np.isfinite(v).all() for v in w.values())


def test_onnx_untouched_still_lifts(onnx_model):
    """The fuzzer's starting point is valid (so the mutations above test the error paths, not a broken base)."""
    from lfmc.frontend.onnx import lift_onnx

    g, w = lift_onnx(onnx_model, "m")
    assert len(g.nodes) > 5 and all(np.isfinite(v).all() for v in w.values())


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory):
    pytest.importorskip("gguf")
    from tests.gguf_files import tiny_gguf

    return tiny_gguf(tmp_path_factory.mktemp("gguf") / "t.gguf", "Q4_0").read_bytes()


@SLOWER
@given(data=st.data())
def test_gguf_importer_fuzzed(gguf_bytes, tmp_path_factory, data):
    """Bytes of a valid GGUF overwritten, cut or zeroed (header, metadata, tensor infos, blocks): the importer
    raises LfmcError or imports a model whose weights have the shapes its graph declares."""
    from lfmc.frontend.gguf import import_gguf
    from lfmc.ir.weights import check_weights

    raw = bytearray(gguf_bytes)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["byte", "zero", "cut", "int"]))
        i = data.draw(st.integers(0, len(raw) - 1))
        if kind == "byte":
            raw[i] = data.draw(st.integers(0, 255))
        elif kind == "zero":
            raw[i:i + 8] = bytes(min(8, len(raw) - i))
        elif kind == "cut":
            del raw[i:]
            break
        else:                                                   # a count, length, offset or type made large
            raw[i:i + 4] = data.draw(st.sampled_from([2**31 - 1, 2**32 - 1, 200, 65536])).to_bytes(4, "little")
    p = tmp_path_factory.mktemp("g") / "m.gguf"
    p.write_bytes(bytes(raw))
    try:
        m = import_gguf(p)
    except LfmcError:
        return
    check_weights(m.graph, m.weights)


def test_gguf_untouched_imports(gguf_bytes, tmp_path):
    from lfmc.frontend.gguf import import_gguf

    (tmp_path / "t.gguf").write_bytes(gguf_bytes)
    m = import_gguf(tmp_path / "t.gguf")
    assert m.graph.attrs["quant"] == "q4g32" and m.tokenizer
