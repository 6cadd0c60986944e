"""Importing a local HF checkpoint directory (config.json + safetensors), with and without weights."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lfmc.frontend import import_hf_dir, import_source
from lfmc.frontend.reference import build_hf_model
from lfmc.ir import LfmcError, print_graph


@pytest.mark.parametrize("name", ["dense-b", "moe-b"])
def test_checkpoint_dir(tmp_path, tiny_models, name):
    m = tiny_models[name]
    hf = build_hf_model(m.provenance["config"], m.weights)
    hf.save_pretrained(tmp_path / name)
    (tmp_path / name / "tokenizer.json").write_text('{"version": "1.0"}')
    got = import_source(str(tmp_path / name))
    assert print_graph(got.graph).replace(f'"{name}"', '"x"') == print_graph(m.graph).replace(f'"{name}"', '"x"')
    assert all(np.array_equal(got.weights[k], m.weights[k]) for k in m.weights)
    assert got.provenance["source"] == "hf" and got.tokenizer == '{"version": "1.0"}'


def test_config_only_dir(tmp_path, tiny_models):
    m = tiny_models["dense-a"]
    d = tmp_path / "conf"
    d.mkdir()
    build_hf_model(m.provenance["config"]).config.to_json_file(d / "config.json")
    got = import_hf_dir(d)
    assert got.weights is None and got.graph.num_parameters() == m.graph.num_parameters()


def test_bad_dirs(tmp_path):
    with pytest.raises(LfmcError, match="no config.json"):
        import_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(LfmcError, match="unsupported architecture 'LlamaForCausalLM'"):
        import_hf_dir(tmp_path)
    with pytest.raises(LfmcError, match="neither a preset"):
        import_source("no-such-thing")
