"""Chat: prompt rendering (LFM2's ChatML by default, a checkpoint's Jinja template in a sandbox, carried from the
checkpoint into the artifact), streaming text with stop strings, and `lfmc chat` under a terminal (pexpect)."""
from __future__ import annotations

import json
import sys

import pytest

from lfmc.compile import compile_model, tokenizer_spec
from lfmc.frontend import chat_template_of, import_hf_dir
from lfmc.ir.model import Model
from lfmc.runtime import Engine
from lfmc.runtime.chat import END_OF_TURN, TextStream, render_chat
from lfmc.runtime.errors import EngineError
from tests.configs import ALL_CONFIGS

MSGS = [{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{{ eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")


def test_default_and_checkpoint_templates():
    assert render_chat(MSGS) == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat(MSGS, TEMPLATE, "<s>", "</s>") == "<s>[system]S</s>[user]hi</s>[assistant]"
    assert render_chat(MSGS, TEMPLATE, add_generation_prompt=False).endswith("hi")
    with pytest.raises(EngineError, match="role"):
        render_chat([{"role": "wizard", "content": "x"}])
    with pytest.raises(EngineError, match="chat template"):            # the sandbox refuses attribute tricks
        render_chat(MSGS, "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(EngineError, match="chat template: no"):
        render_chat(MSGS, "{{ raise_exception('no') }}")
    for t in ("{" * 90, "{{" + "(" * 400 + "1" + ")" * 400 + "}}", "{{ x" + "[0]" * 2000 + " }}"):
        with pytest.raises(EngineError, match="chat template"):       # RecursionError inside Jinja's parser
            render_chat(MSGS, t)


def test_text_stream_holds_back_partial_stops_and_utf8():
    ids = list("ab<|im_end|>cd".encode())
    ts = TextStream(lambda t: bytes(t).decode("utf-8", "replace"), [END_OF_TURN])
    shown = "".join(ts.push(i) for i in ids[:4])                      # "ab<|" : "<|" may start the stop
    assert shown == "ab"
    for i in ids[4:]:
        ts.push(i)
        if ts.stopped:
            break
    assert ts.stopped and ts.text == "ab"
    ts = TextStream(lambda t: bytes(t).decode("utf-8", "replace"))
    assert ts.push(0xC3) == "" and ts.push(0xA9) == "é"


def test_chat_template_travels_from_checkpoint_to_artifact(tmp_path, tiny_models):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(ALL_CONFIGS["dense-c"]))
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE, "bos_token": "<s>",
                                                         "eos_token": {"content": "</s>"}}))
    chat = chat_template_of(d)
    assert chat == {"template": TEMPLATE, "bos_token": "<s>", "eos_token": "</s>"}
    assert import_hf_dir(d).provenance["chat"] == chat
    m = tiny_models["dense-c"]
    m = Model(m.graph, m.weights, dict(m.provenance, chat=chat))
    assert tokenizer_spec(m, 256) == {"kind": "bytes", "chat": chat}
    eng = Engine(compile_model(m, tmp_path / "art", max_batch=1, max_context=64))
    assert eng.chat == chat


def test_lfmc_chat_in_a_terminal(served_artifact):
    pexpect = pytest.importorskip("pexpect")
    eng = Engine(served_artifact)
    child = pexpect.spawn(sys.executable, ["-m", "lfmc", "chat", str(served_artifact), "--max-new-tokens", "12",
                                           "--system", "Be brief."], encoding="utf-8", timeout=60)
    try:
        child.expect("you> ")
        history = [{"role": "system", "content": "Be brief."}]
        for line in ("hello there", "and again"):
            child.sendline(line)
            child.expect(r"\[(\d+) tokens, [0-9.]+ tokens/s\]")
            history.append({"role": "user", "content": line})
            ids = eng.encode(render_chat(history))
            ts = TextStream(eng.decode_text, [END_OF_TURN])
            for tok in eng.stream(ids, 12):
                ts.push(tok)
                if ts.stopped:
                    break
            assert int(child.match.group(1)) == len(ts.ids)
            history.append({"role": "assistant", "content": ts.text})
            child.expect("you> ")
        child.sendline("/reset")
        child.expect(r"\(conversation cleared\)")
        child.expect("you> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
