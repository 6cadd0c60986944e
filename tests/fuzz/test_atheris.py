"""Bounded coverage-guided fuzzer runs (atheris) of each parser target, seeded with valid inputs: libFuzzer
exits 0 when no input crashed (an exception outside lfmc's error types)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

from lfmc.frontend.config import graph_from_config  # noqa: E402
from lfmc.ir.text import print_graph  # noqa: E402
from tests.configs import ALL_CONFIGS  # noqa: E402

RUNNER = Path(__file__).with_name("atheris_run.py")
from tests.fuzz import SCALE  # noqa: E402

RUNS = {"ir": 3000 * SCALE, "manifest": 3000 * SCALE, "chat": 2000 * SCALE, "gguf": 300 * SCALE}


def _seed(target: str, d: Path, served_artifact) -> None:
    d.mkdir()
    if target == "ir":
        for name in ("dense-c", "moe-b"):
            (d / name).write_text(print_graph(graph_from_config(ALL_CONFIGS[name], name)))
    elif target == "gguf":
        from tests.gguf_files import tiny_gguf

        tiny_gguf(d / "q8.gguf", "Q8_0")
        tiny_gguf(d / "q4.gguf", "Q4_0")
    elif target == "manifest":
        (d / "m").write_text(json.dumps(json.loads((Path(served_artifact) / "manifest.json").read_text())))
    else:
        (d / "c").write_text('[{"role": "user", "content": "hi"}]')


@pytest.mark.parametrize("target", sorted(RUNS))
def test_atheris_run(target, tmp_path, served_artifact):
    corpus = tmp_path / "corpus"
    _seed(target, corpus, served_artifact)
    r = subprocess.run([sys.executable, str(RUNNER), target, str(corpus), f"-runs={RUNS[target]}", "-max_len=40000",
                        "-timeout=20", f"-artifact_prefix={tmp_path}/"], capture_output=True, text=True, timeout=900,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert f"Done {RUNS[target]} runs" in r.stderr or "DONE" in r.stderr, r.stderr[-2000:]
