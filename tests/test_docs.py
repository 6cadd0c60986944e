"""Every example in the docs runs: each `$ ` line of a ```console block in docs/**/*.md, in order, in a fresh
directory per page, with this environment's `lfmc` and `python` first on the PATH; each must exit 0. A line
ending in `&` starts a background process (a server), stopped when the page is done."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
# meta_schedule searches and the cross / GPU builds (each covered by its own tests too): `make test-all`
SLOW = {"commands/tune.md", "targets/arm.md", "targets/apple.md", "targets/qualcomm.md", "targets/amd.md",
        "targets/cuda.md", "commands/compile.md", "commands/import.md", "commands/export-mlir.md",
        "commands/calibrate.md", "targets/wafer.md", "../README.md",
        # each also covered by the tests of its command (tests/runtime/test_server.py, test_chat.py, test_verify.py)
        "commands/serve.md", "commands/chat.md", "commands/verify.md"}
README = Path(__file__).resolve().parents[1] / "README.md"


def examples(page: Path) -> list[str]:
    out, inside = [], False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```console"
            continue
        if inside and line.startswith("$ "):
            out.append(line[2:])
    return out


PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
BACKGROUND = re.compile(r"\s*&\s*(#.*)?$")              # `cmd &   # comment`: a background process


def _path(page: str) -> Path:
    return README if page == "../README.md" else DOCS / page


def test_every_command_and_target_family_has_a_page():
    from lfmc.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = [c for c in sub.choices if f"commands/{c}.md" not in PAGES]
    assert not missing, f"commands without a docs page: {missing}"
    for fam in ("host", "arm", "apple", "qualcomm", "amd", "cuda", "wafer"):
        assert f"targets/{fam}.md" in PAGES
    index = (DOCS / "README.md").read_text()
    assert all(Path(p).name in index for p in PAGES if p != "README.md")
    assert "docs/README.md" in README.read_text()


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW else p
                                  for p in PAGES + ["../README.md"] if examples(_path(p))])
def test_docs_examples_run(page, tmp_path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=str(DOCS.parent))
    background: list[subprocess.Popen] = []
    try:
        for cmd in examples(_path(page)):
            if BACKGROUND.search(cmd):
                background.append(subprocess.Popen(["bash", "-c", "exec " + BACKGROUND.sub("", cmd)], cwd=tmp_path,
                                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                                   start_new_session=True))
                continue
            r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=900)
            assert r.returncode == 0, f"{page}: `{cmd}` exited {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    finally:
        for p in background:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)


def test_short_conv_life_is_named_in_five_files_or_fewer():
    """docs/architecture.md names the files of one operator's life; each exists and mentions the op."""
    text = (DOCS / "architecture.md").read_text()
    para = text[text.index("The life of one operator, `short_conv`"):]
    para = para[:para.index("\n\n")]
    files = re.findall(r"`(lfmc/[\w/]+\.py)`", para)
    assert 1 < len(files) <= 5, files
    for f in files:
        p = DOCS.parent / f
        assert p.is_file() and "short_conv" in p.read_text(), f
