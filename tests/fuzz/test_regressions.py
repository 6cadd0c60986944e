"""Bugs the fuzzers found, each pinned by the input that found it."""
from __future__ import annotations

import base64
import json
import shutil

import pytest

from lfmc.ir.errors import LfmcError, ParseError
from lfmc.ir.text import parse_graph
from lfmc.runtime import Engine
from lfmc.runtime.artifact import load_manifest
from lfmc.runtime.errors import EngineError, RuntimeLoadError
from lfmc.runtime.verify import verify_artifact


def test_control_character_in_an_ir_string_is_a_parse_error():
    """atheris (ir): a raw control byte inside a string literal made json.loads raise JSONDecodeError."""
    crash = base64.b64decode("IyBsZm1jIElSIHYxCmdyYXBoICJk////////A5JlbnNlLWMiIHsKdQ==")
    with pytest.raises(ParseError, match="malformed string literal"):
        parse_graph(crash.decode("utf-8", "replace"))
    with pytest.raises(ParseError, match=r"<ir>:1:7"):
        parse_graph('graph "a\x03b" {}')


@pytest.mark.parametrize("edit", [
    lambda m: m.update(files=None),                       # hypothesis (manifest): AttributeError on None.items()
    lambda m: m.update(kernels=[1, 2]),                   # TypeError: list is not a mapping
    lambda m: m["limits"].update(max_context="big"),
    lambda m: m["limits"].update(max_batch=10 ** 12),     # would allocate terabytes
    lambda m: m["plan"]["entries"]["decode"].append({"kernel": 3}),
    lambda m: m["plan"]["entries"]["decode"][0]["args"].append(["slab"]),
    lambda m: m["plan"].update(vocab_size=None),
    lambda m: m["plan"]["state"].update(x={"shape": "C", "dtype": "float32"}),
    lambda m: m.update(tokenizer={"kind": "pickle"}),
    lambda m: m["plan"].pop("logits"),                    # hypothesis x5 (manifest): KeyError in prefill
    lambda m: m["plan"]["logits"].update(decode=[]),      # ValueError unpacking in decode
    lambda m: m["target"].update(features=None),          # hypothesis x20 (manifest): AttributeError in verify
    lambda m: m["model"].update(eos_token_id="x"),
])
def test_forged_manifest_fields_are_load_errors(served_artifact, tmp_path, edit):
    d = tmp_path / "art"
    shutil.copytree(served_artifact, d)
    m = json.loads((d / "manifest.json").read_text())
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m))
    for fn in (lambda: load_manifest(d), lambda: verify_artifact(d), lambda: Engine(d)):
        with pytest.raises(RuntimeLoadError):
            fn()


def test_memory_budget_is_checked_before_allocation(served_artifact):
    with pytest.raises(EngineError, match="over the memory budget"):
        Engine(served_artifact, memory_budget=1 << 16)
    with pytest.raises(EngineError, match="over the memory budget"):
        Engine(served_artifact, max_context=1 << 40)


def test_truncated_onnx_initializer_is_an_lfmc_error():
    """hypothesis (onnx): numpy_helper.to_array raised ValueError on a truncated raw_data."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from lfmc.frontend.onnx import lift_onnx

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], b"\x00" * 64, raw=True)
    w.raw_data = b"\x00" * 10                                      # truncated after the fact
    g = helper.make_graph([helper.make_node("Gather", ["w", "ids"], ["y"])], "g",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], [w])
    with pytest.raises(LfmcError, match="initializer 'w' is unreadable"):
        lift_onnx(helper.make_model(g), "m")


def test_negative_seed_is_a_400_not_a_500(served_artifact):
    """Found in review after the fuzz runs: numpy refuses negative seeds, which surfaced as HTTP 500."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lfmc.runtime.batcher import Batcher, Request
    from lfmc.runtime.server import create_app

    eng = Engine(served_artifact)
    with TestClient(create_app(eng, "t"), raise_server_exceptions=False) as c:
        r = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3, "seed": -5})
        assert r.status_code == 400 and "seed" in r.json()["error"]["message"]
    b = Batcher(eng)
    try:
        with pytest.raises(EngineError, match="seed"):
            b.submit(Request([1], 2, lambda ev: None, seed=-1))
    finally:
        b.close()


@pytest.mark.parametrize("entry", [{"dtype": "F32", "shape": "64", "data_offsets": [0, 4]},
                                   {"dtype": "F32", "shape": [1], "data_offsets": "0,4"},
                                   {"dtype": 7, "shape": [1], "data_offsets": [0, 4]},
                                   {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}])
def test_forged_param_header_entries_are_load_errors(served_artifact, tmp_path, entry):
    """make fuzz (params, header and hash both forged): a header entry of the wrong types raised ValueError /
    TypeError inside the reader; now it is a RuntimeLoadError naming the parameter."""
    import hashlib
    import struct

    d = tmp_path / "art"
    shutil.copytree(served_artifact, d)
    f = d / "params.safetensors"
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    name = sorted(k for k in header if k != "__metadata__")[0]
    header[name] = entry
    h = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n:])
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["params.safetensors"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(m))
    for fn in (lambda: verify_artifact(d), lambda: Engine(d)):
        with pytest.raises(RuntimeLoadError, match=name.replace(".", r"\.")):
            fn()


def test_gguf_with_heads_not_a_multiple_of_kv_heads_is_a_gguf_error(tmp_path):
    """atheris (gguf): head_count_kv 256 beside head_count 2 raised a bare ValueError from the op's shape check
    while the graph was built."""
    pytest.importorskip("gguf")
    from lfmc.frontend.config import graph_from_config
    from lfmc.frontend.gguf import GgufError, import_gguf
    from lfmc.ir.errors import ShapeError
    from lfmc.ir.model import Model
    from lfmc.ir.weights import random_weights
    from tests.gguf_files import tiny_gguf, write_gguf

    good = import_gguf(tiny_gguf(tmp_path / "good.gguf", "Q8_0"))
    cfg = dict(good.provenance["config"])
    g = graph_from_config(cfg, "tiny")
    bad = Model(g, random_weights(g, seed=0), {"config": {**cfg, "num_key_value_heads": 256}})
    path = write_gguf(bad, tmp_path / "bad.gguf", "F32")
    with pytest.raises(GgufError, match=r"bad\.gguf: the metadata does not describe .*multiple of kv_heads 256"):
        import_gguf(path)
    with pytest.raises(ShapeError) as e:                  # the op check itself: an LfmcError and a ValueError
        graph_from_config({**cfg, "num_key_value_heads": 256}, "tiny")
    assert isinstance(e.value, LfmcError) and isinstance(e.value, ValueError)
