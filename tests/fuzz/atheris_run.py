"""A coverage-guided fuzzer run (atheris / libFuzzer) over lfmc's parsers of untrusted input.

    .venv/bin/python tests/fuzz/atheris_run.py TARGET [CORPUS_DIR] -runs=N [-max_len=B] [libFuzzer flags]

TARGET: ``ir`` (IR text -> parse_graph / verify), ``manifest`` (manifest JSON -> the runtime's structure and
plan checks), ``onnx`` (ONNX protobuf bytes -> lift_onnx), ``chat`` (JSON messages -> render_chat with a random
template), ``gguf`` (GGUF file bytes -> import_gguf). Any exception that is not one of lfmc's error types is a crash (libFuzzer writes the input to
``crash-*``). ``tests/fuzz/test_atheris.py`` runs each target for a bounded number of inputs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports():
    from lfmc.frontend.gguf import import_gguf
    from lfmc.frontend.onnx import lift_onnx
    from lfmc.ir.errors import LfmcError
    from lfmc.ir.text import parse_graph
    from lfmc.ir.verify import verify
    from lfmc.runtime.artifact import check_plan, check_structure
    from lfmc.runtime.chat import render_chat
    from lfmc.runtime.errors import EngineError, RuntimeLoadError

OURS = (LfmcError, RuntimeLoadError, EngineError)


def ir(data: bytes) -> None:
    try:
        verify(parse_graph(data.decode("utf-8", "replace")))
    except LfmcError:
        pass


def manifest(data: bytes) -> None:
    try:
        m = json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        return
    if not isinstance(m, dict):
        return
    try:
        check_structure(m)
        check_plan(m)
    except RuntimeLoadError:
        pass


def onnx_target(data: bytes) -> None:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        mo = onnx.ModelProto.FromString(data)
    except (DecodeError, ValueError, RuntimeError):
        return
    try:
        lift_onnx(mo, "m")
    except LfmcError:
        pass


def chat(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    template = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 200)) if fdp.ConsumeBool() else None
    try:
        msgs = json.loads(fdp.ConsumeUnicodeNoSurrogates(400))
    except ValueError:
        msgs = [{"role": "user", "content": fdp.ConsumeUnicodeNoSurrogates(50)}]
    if not isinstance(msgs, list):
        return
    try:
        render_chat(msgs, template)
    except OURS:
        pass


def gguf_target(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.gguf"
        p.write_bytes(data)
        try:
            import_gguf(p)
        except LfmcError:
            pass


TARGETS = {"ir": ir, "manifest": manifest, "onnx": onnx_target, "chat": chat, "gguf": gguf_target}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: atheris_run.py {{{','.join(TARGETS)}}} [CORPUS] -runs=N")
    fn = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, fn)
    atheris.Fuzz()
