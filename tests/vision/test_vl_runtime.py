"""The VL runtime's edges: bad images get a clear error before their pixels are decoded, `lfmc run --image`,
and the OpenAI client sending an image through `lfmc serve` (data: URL; local paths only behind the flag;
never a network fetch)."""
from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from lfmc.runtime.vision import ImageError, ImageProcessor, load_image

from tests.vision.helpers import pattern


def _png(w: int, h: int, pixels: bytes | None = None) -> bytes:
    """A PNG with this header (IHDR) and ``pixels`` (raw rows, filter bytes included) or one empty row: big
    headers cost nothing to make (a decompression bomb's claim)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = pixels if pixels is not None else b"\0" * (1 + 3 * min(w, 64))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _real_png(h: int = 64, w: int = 96) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pattern(h, w)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("data,what", [
    (b"definitely not an image", "not an image"),
    (_png(1, 1, b"\0\0\0\0"), "smaller than"),
    (_png(20000, 8), "over the limit"),
    (_png(30000, 30000), "over the limit"),            # 900 Mpx claimed by a ~100-byte file
    ("truncated", "truncated"),
], ids=["garbage", "1x1", "20000-wide", "bomb", "truncated"])
def test_bad_images_are_refused_clearly(data, what):
    if data == "truncated":
        data = _real_png()[:200]
    with pytest.raises(ImageError, match=what):
        load_image(data)


def test_bad_inputs_other_than_bytes():
    with pytest.raises(ImageError, match="no such|cannot read"):
        load_image("/nonexistent/cat.png")
    with pytest.raises(ImageError, match="uint8"):
        load_image(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ImageError, match="not an image"):
        load_image(12345)
    assert load_image(_real_png()).size == (96, 64)


def test_processor_settings_are_checked():
    with pytest.raises(ImageError, match="min_tiles"):
        ImageProcessor({"min_tiles": 5, "max_tiles": 2})
    with pytest.raises(ImageError, match="positive integer"):
        ImageProcessor({"tile_size": 0})


@pytest.fixture(scope="module")
def vl_artifact(tmp_path_factory):
    from lfmc.compile import compile_model
    from lfmc.frontend import import_preset

    m = import_preset("lfm2-vl-tiny", weights=True, seed=5, std=0.25)
    return compile_model(m, tmp_path_factory.mktemp("vl") / "tiny.art", target="host", max_batch=2,
                         max_context=2048, prefill_chunk=64)


def test_engine_generate_with_images_and_errors(vl_artifact, tmp_path):
    from lfmc.runtime import Engine
    from lfmc.runtime.errors import EngineError

    eng = Engine(vl_artifact)
    png = _real_png()
    a = eng.generate("<image>What is this?", max_new_tokens=6, stop=[], images=[png])
    b = eng.generate("What is this?", max_new_tokens=6, stop=[], images=[png])     # the image goes in front
    assert a.tokens == b.tokens and a.prompt_tokens > 64
    with pytest.raises(EngineError, match="2 image placeholders for 1"):
        eng.generate("<image><image>x", images=[png])
    with pytest.raises(EngineError, match="image tokens"):
        eng.prefill(eng.new_sequence(), [255, 255, 10])       # image tokens without their embeddings


def test_cli_run_with_image(vl_artifact, tmp_path):
    img = tmp_path / "pic.png"
    img.write_bytes(_real_png())
    r = subprocess.run([sys.executable, "-m", "lfmc", "run", str(vl_artifact), "--prompt", "<image>Describe.",
                        "--image", str(img), "--max-new-tokens", "5", "--ignore-eos", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["tokens"]) == 5 and out["prompt_tokens"] > 64
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    r = subprocess.run([sys.executable, "-m", "lfmc", "run", str(vl_artifact), "--prompt", "x", "--image", str(bad)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "not an image" in r.stderr


def test_openai_client_sends_an_image(vl_artifact, tmp_path):
    """The openai package's client against the app (in process, over httpx's ASGI transport): a data: URL image
    gives the same answer as Engine.generate; network URLs and local paths (flag off) are refused."""
    import httpx
    import openai
    from fastapi.testclient import TestClient

    from lfmc.runtime import Engine
    from lfmc.runtime.server import create_app

    png = _real_png()
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    eng = Engine(vl_artifact)
    want = Engine(vl_artifact).generate("<|im_start|>user\n<image>Describe.<|im_end|>\n<|im_start|>assistant\n",
                                        max_new_tokens=8, stop=[], images=[png])
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "pic.png").write_bytes(png)
    app = create_app(eng, "vl", local_images=str(tmp_path / "ok"))
    with TestClient(app) as tc:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=tc)
        msg = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                            {"type": "text", "text": "Describe."}]}]
        r = client.chat.completions.create(model="vl", messages=msg, max_tokens=8, temperature=0)
        assert r.choices[0].message.content == want.text and r.usage.prompt_tokens == want.prompt_tokens
        for bad, status, what in [("https://example.com/cat.png", 400, "not fetched from the network"),
                                  ("data:image/png;base64,@@@", 400, "not valid base64"),
                                  ("data:image/png;base64," + base64.b64encode(b"nope").decode(), 400, "not an image"),
                                  (str(tmp_path / "elsewhere.png"), 400, "outside the allowed directory")]:
            body = {"model": "vl", "max_tokens": 2, "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": bad}}]}]}
            res = tc.post("/v1/chat/completions", json=body)
            assert res.status_code == status and what in res.json()["error"]["message"], (bad, res.text)
        body["messages"][0]["content"][0]["image_url"]["url"] = str(tmp_path / "ok" / "pic.png")
        assert tc.post("/v1/chat/completions", json=body).status_code == 200


def test_lfmc_chat_with_an_image(vl_artifact, tmp_path):
    """`/image PATH` in `lfmc chat` attaches the image to the next message: the reply's token count is what
    Engine.generate gives for the same rendered prompt and image; a bad file is refused and the chat goes on."""
    pexpect = pytest.importorskip("pexpect")
    from lfmc.runtime import Engine
    from lfmc.runtime.chat import END_OF_TURN, TextStream, render_chat

    pic = tmp_path / "pic.png"
    pic.write_bytes(_real_png())
    (tmp_path / "bad.png").write_bytes(b"nope")
    eng = Engine(vl_artifact)
    child = pexpect.spawn(sys.executable, ["-m", "lfmc", "chat", str(vl_artifact), "--max-new-tokens", "10"],
                          encoding="utf-8", timeout=120)
    try:
        child.expect("you> ")
        child.sendline(f"/image {tmp_path / 'bad.png'}")
        child.expect("not an image")
        child.expect("you> ")
        child.sendline(f"/image {pic}")
        child.expect("attached to your next message")
        child.expect("you> ")
        child.sendline("what is this")
        child.expect(r"\[(\d+) tokens, [0-9.]+ tokens/s\]")
        ids, rows = eng.prepare(render_chat([{"role": "user", "content": "<image>what is this"}]), [pic.read_bytes()])
        ts = TextStream(eng.decode_text, [END_OF_TURN])
        for tok in eng.stream(ids, 10, image_rows=rows):
            ts.push(tok)
            if ts.stopped:
                break
        assert int(child.match.group(1)) == len(ts.ids)
        child.expect("you> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


@pytest.mark.parametrize("opts", [{"quant": "q4g32"}, {"quant": "q8", "act_quant": "i8"}], ids=["q4g32", "w8a8"])
def test_quantized_decoder_with_images(opts, tmp_path):
    """The decoder of a VL artifact takes every quantization while the encoder stays f32: the compiled image
    prompt follows the interpreter on the same quantized decoder (the passes' own output), logits within 3e-2."""
    from lfmc.compile import compile_model
    from lfmc.frontend import import_preset
    from lfmc.ir.interp import Interpreter
    from lfmc.options import CompileOptions
    from lfmc.passes import run_pipeline
    from lfmc.runtime import Engine

    m = import_preset("lfm2-vl-tiny", weights=True, seed=9, std=0.25)
    eng = Engine(compile_model(m, tmp_path / "q", target="host", max_context=2048, prefill_chunk=64, **opts))
    q = run_pipeline(m, None, CompileOptions(**opts).pass_options())
    assert any(p.type.dtype in ("i8", "u4") for p in q.graph.params().values())
    assert all(p.type.dtype == "f32" for p in q.vision.params().values())
    ids, rows = eng.prepare([1, 2, 3], [_real_png()])
    seq = eng.new_sequence()
    got = eng.prefill(seq, ids, rows)
    dec = Interpreter(q.graph, q.weights_of(q.graph))
    img = np.zeros((len(ids), rows.shape[1]), np.float32)
    img[np.asarray(ids) == 255] = rows
    ref = dec.run(ids, dec.new_state(), img)[-1]
    assert np.abs(got - ref).max() <= 3e-2 * max(1.0, np.abs(ref).max())


def test_import_and_show_list_the_image_encoder(tmp_path):
    out = tmp_path / "vl.lfm"
    r = subprocess.run([sys.executable, "-m", "lfmc", "import", "lfm3-vl-tiny", "--random-weights", "-o", str(out),
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["vision_parameters"] > 0 and (out / "vision.lfmir").is_file()
    r = subprocess.run([sys.executable, "-m", "lfmc", "show", str(out), "--json"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    ops = {n["op"] for n in json.loads(r.stdout)["vision"]["nodes"]}
    assert {"grid_conv", "vision_attention", "merge_tokens"} <= ops
    r = subprocess.run([sys.executable, "-m", "lfmc", "show", str(out), "--ir"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.count("graph \"") == 2
