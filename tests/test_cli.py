"""The lfmc command line: import, show, check, presets; errors exit 2 with a message."""
from __future__ import annotations

import json

import numpy as np

from lfmc.cli import main
from lfmc.ir import load_model


def test_import_show_check(tmp_path, capsys):
    out = tmp_path / "t.lfm"
    assert main(["import", "lfm2-moe-tiny", "--random-weights", "--seed", "5", "--init-std", "0.25",
                 "-o", str(out)]) == 0
    assert load_model(out).provenance["seed"] == 5
    capsys.readouterr()
    assert main(["show", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert isinstance(s["parameters"], int) and s["parameters"] == load_model(out).graph.num_parameters()
    assert {r["class"] for r in s["nodes"]} >= {"scaled_toeplitz", "low_rank", "diagonal"}
    assert main(["show", str(out)]) == 0
    text = capsys.readouterr().out
    assert "moe" in text and "per token of context" in text
    assert main(["check", str(out), "--against-torch", "--prefill", "3", "--decode-steps", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] and len(r["cases"]) == 3 and r["max_abs_diff"] < 1e-3


def test_check_fails_over_tolerance(tmp_path, capsys):
    out = tmp_path / "t.lfm"
    main(["import", "lfm2-tiny", "--random-weights", "--init-std", "0.25", "-o", str(out)])
    m = load_model(out)
    ir = (out / "model.lfmir").read_text().replace("rope_theta = 1000000.0", "rope_theta = 10000.0", 1)
    (out / "model.lfmir").write_text(ir)                      # the IR now disagrees with the reference
    assert m.weights is not None
    assert main(["check", str(out), "--against-torch", "--prefill", "8", "--decode-steps", "1"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_show_preset_directly(capsys):
    assert main(["show", "lfm2-1.2b", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == 1_170_340_608


def test_errors_exit_2(tmp_path, capsys):
    assert main(["show", str(tmp_path / "missing.lfm")]) == 2
    assert "lfmc: error:" in capsys.readouterr().err
    assert main(["import", "lfm2-tiny", "-o", str(tmp_path / "c.lfm")]) == 0
    assert main(["check", str(tmp_path / "c.lfm"), "--against-torch"]) == 2
    assert "config-only" in capsys.readouterr().err
    (tmp_path / "bad.lfm").mkdir()
    (tmp_path / "bad.lfm" / "model.lfmir").write_text("graph \"x\" {\n  input %t : i64[T]\n  %0 : f32[T")
    assert main(["show", str(tmp_path / "bad.lfm")]) == 2
    assert "model.lfmir:3:" in capsys.readouterr().err
    assert np.isfinite(1.0)
