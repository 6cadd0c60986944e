"""Saved models (NAME.lfm) and weights: round trip, determinism, and clear errors on bad files."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from lfmc.frontend import import_preset
from lfmc.ir import LfmcError, ModelLoadError, ParseError, WeightsError, load_model, random_weights, save_model
from lfmc.ir.model import IR_FILE, WEIGHTS_FILE, WRITER_FILE


@pytest.fixture
def saved(tmp_path):
    m = import_preset("lfm2-tiny", weights=True, seed=3, std=0.25)
    return m, save_model(m, tmp_path / "tiny.lfm")


def test_round_trip(saved):
    m, path = saved
    m2 = load_model(path)
    assert set(m2.weights) == set(m.weights)
    assert all(np.array_equal(m.weights[k], m2.weights[k]) for k in m.weights)
    assert m2.provenance["seed"] == 3 and m2.provenance["preset"] == "lfm2-tiny"


def test_random_weights_are_seeded_and_order_independent():
    m = import_preset("lfm2-tiny")
    a, b, c = (random_weights(m.graph, seed=s, std=0.1) for s in (7, 7, 8))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])
    # norm weights sit around 1, projections around 0
    assert abs(a["model.embedding_norm.weight"].mean() - 1) < 0.1
    assert abs(a["model.layers.0.conv.in_proj.weight"].std() - 0.1) < 0.01
    # pinned values: the same seed gives the same weights on any machine (PCG64 keyed by sha256(seed:name))
    assert a["model.embed_tokens.weight"][0, :3].tolist() == pytest.approx(
        [0.012570986524224281, 0.08590193092823029, -0.017287971451878548], rel=1e-6)
    g2 = import_preset("lfm2-tiny").graph
    g2.nodes = list(reversed(g2.nodes))                     # parameter order does not matter
    assert np.array_equal(random_weights(g2, seed=7, std=0.1)["model.embed_tokens.weight"],
                          a["model.embed_tokens.weight"])


def test_corrupt_weights_file(saved):
    _, path = saved
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"weights.safetensors: corrupt or unreadable"):
        load_model(path)
    (path / WEIGHTS_FILE).write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="corrupt or unreadable"):
        load_model(path)


def test_mismatched_weight_shapes(saved, tmp_path):
    m, _ = saved
    m.weights["model.layers.0.conv.conv.weight"] = np.zeros((64, 1, 4), np.float32)
    with pytest.raises(WeightsError, match=r"'model.layers.0.conv.conv.weight' has shape \[64, 1, 4\]"):
        save_model(m, tmp_path / "bad.lfm")
    assert not (tmp_path / "bad.lfm").exists()              # nothing half-written is left behind


def test_missing_and_extra_weights(saved):
    m, _ = saved
    w = dict(m.weights)
    w.pop("model.layers.2.self_attn.q_layernorm.weight")
    m.weights = w
    with pytest.raises(WeightsError, match=r"q_layernorm.weight' \(used by %14\) is missing"):
        m.check()
    w["model.layers.2.self_attn.q_layernorm.weight"] = np.ones(16, np.float32)
    w["stray"] = np.ones(2, np.float32)
    with pytest.raises(WeightsError, match="not used by the model: stray"):
        m.check()


def test_truncated_ir_file(saved):
    _, path = saved
    text = (path / IR_FILE).read_text()
    (path / IR_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(ParseError, match=r"model.lfmir:\d+:\d+"):
        load_model(path)


def test_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="not a saved lfmc model"):
        load_model(tmp_path / "nothing.lfm")
    (tmp_path / "empty.lfm").mkdir()
    with pytest.raises(ModelLoadError, match="missing model.lfmir"):
        load_model(tmp_path / "empty.lfm")


def test_overwrite_is_atomic(saved):
    m, path = saved
    m.weights["model.embedding_norm.weight"] = np.full(64, 2.0, np.float32)
    save_model(m, path)
    assert load_model(path).weights["model.embedding_norm.weight"][0] == 2.0
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.lfm"]


def test_killed_write_is_cleaned_up_by_the_next(saved):
    """A write killed with SIGKILL cannot clean up: it leaves its temporary directory (and the artifact as it
    was); the next write of the same path removes it, but not the directory of a write still in progress."""
    m, path = saved
    code = ("import sys, time; from pathlib import Path; from lfmc.ir.model import write_dir_atomically\n"
            "def fill(t):\n    (t / 'part').write_text('x'); print('filling', flush=True); time.sleep(600)\n"
            f"write_dir_atomically({str(path)!r}, fill)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "filling"
    finally:
        proc.kill()
        proc.wait()
    left = [p for p in path.parent.iterdir() if p.name.startswith(".tiny.lfm.")]
    assert len(left) == 1 and (left[0] / "part").exists()
    assert load_model(path).weights is not None            # the old model is intact
    live = path.parent / ".tiny.lfm.live"                  # another process (this one) writing right now
    live.mkdir()
    (live / WRITER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    (path.parent / ".tiny.lfm.old").mkdir()                # killed between the renames of a replacement
    save_model(m, path)
    assert sorted(p.name for p in path.parent.iterdir()) == [".tiny.lfm.live", "tiny.lfm"]


def test_random_weights_refused_when_too_large():
    with pytest.raises(LfmcError, match=r"need \d+\.\d GiB.*config-only"):
        import_preset("lfm2-24b-a2b", weights=True)
