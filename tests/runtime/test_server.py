"""`lfmc serve`, driven by the official openai client on 127.0.0.1: the same greedy completions as
Engine.generate (streaming and not, completions and chat), 16 concurrent clients, overload answered with 429,
clients that disconnect mid-stream free their slots, bad requests are 400 / 413 with OpenAI's error shape."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lfmc.runtime import Engine
from lfmc.runtime.chat import END_OF_TURN, render_chat

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, artifact, *args: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "lfmc", "serve", str(artifact), "--port", str(self.port),
                                      "--model-name", "tiny", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not come up")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def server(served_artifact):
    s = Server(served_artifact)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def engine(served_artifact):
    return Engine(served_artifact)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


PROMPTS = ["Hello", "The weather today", "a", "0123456789", "Liquid models are", "zz top"]


def test_models_and_health(client, server, engine):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert models[0].model_extra["eos_token_id"] == engine.eos_token_id
    h = server.health()
    assert h["status"] == "ok" and h["max_batch"] == 4


@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_completion_equals_generate(client, engine, prompt):
    want = engine.generate(prompt, 16)
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0)
    c = r.choices[0]
    assert c.text == want.text and c.model_extra["tokens"] == want.tokens
    assert c.finish_reason == ("stop" if want.stop_reason == "stop" else "length")
    assert r.usage.completion_tokens == len(want.tokens) and r.usage.prompt_tokens == len(engine.encode(prompt))
    streamed = [ch.choices[0].text for ch in client.completions.create(model="tiny", prompt=prompt, max_tokens=16,
                                                                        temperature=0, stream=True)]
    assert "".join(streamed) == want.text and len(streamed) >= 2


def test_token_prompt_and_stop_string(client, engine):
    ids = [72, 105, 33]
    want = engine.generate(ids, 24)
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=24, temperature=0)
    assert r.choices[0].model_extra["tokens"] == want.tokens
    stop = want.text[5:7]                                      # a string that does occur in the output
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=24, temperature=0, stop=[stop])
    assert r.choices[0].text == want.text[:want.text.find(stop)] and r.choices[0].finish_reason == "stop"
    parts = client.completions.create(model="tiny", prompt=ids, max_tokens=24, temperature=0, stop=stop, stream=True)
    assert "".join(p.choices[0].text for p in parts) == want.text[:want.text.find(stop)]


def test_chat_equals_generate_on_the_template(client, engine):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    want = engine.generate(render_chat(msgs), 20)
    text = want.text.split(END_OF_TURN)[0]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=20, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == text
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=20, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_sixteen_concurrent_clients(client, engine, server):
    rng = np.random.default_rng(3)
    prompts = ["".join(chr(int(c)) for c in rng.integers(97, 123, int(n))) for n in rng.integers(1, 40, 16)]
    want = [engine.generate(p, 24).text for p in prompts]

    def one(i: int) -> str:
        if i % 2:
            return "".join(ch.choices[0].text for ch in client.completions.create(
                model="tiny", prompt=prompts[i], max_tokens=24, temperature=0, stream=True))
        return client.completions.create(model="tiny", prompt=prompts[i], max_tokens=24, temperature=0).choices[0].text

    with ThreadPoolExecutor(16) as ex:
        got = list(ex.map(one, range(16)))
    assert got == want
    h = server.health()
    assert h["active"] == 0 and h["waiting"] == 0


def test_disconnect_mid_stream_frees_the_slot(server, engine, client):
    with httpx.stream("POST", server.url + "/v1/completions", json={"prompt": "abc", "max_tokens": 400,
                                                                     "temperature": 0, "stream": True},
                      timeout=30) as r:
        it = r.iter_lines()
        got = [next(it) for _ in range(3)]
        assert any(g.startswith("data: ") for g in got)
    deadline = time.time() + 20
    while time.time() < deadline and server.health()["active"]:
        time.sleep(0.1)
    assert server.health()["active"] == 0
    assert client.completions.create(model="tiny", prompt="abc", max_tokens=4, temperature=0).choices[0].text == \
        engine.generate("abc", 4).text


def test_bad_requests_get_openai_errors(server):
    post = lambda body, **kw: httpx.post(server.url + "/v1/completions", timeout=30, **({"json": body} | kw))  # noqa: E731
    cases = [({"prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
             ({"prompt": "x", "temperature": -1}, 400, "temperature"),
             ({"prompt": "x", "n": 9}, 400, "n must be"),
             ({"prompt": "x", "logit_bias": {"99999": 1}}, 400, "logit_bias"),
             ({"prompt": "x", "response_format": {"type": "xml"}}, 400, "response_format"),
             ({"prompt": "x", "logprobs": 50}, 400, "logprobs"),
             ({"prompt": ""}, 400, "empty"),
             ({"prompt": [1, 2, 9999]}, 400, "outside"),
             ({"prompt": "x" * 600, "max_tokens": 1}, 400, "context"),
             ({"prompt": {"a": 1}}, 400, "prompt must be")]
    for body, status, words in cases:
        r = post(body)
        assert r.status_code == status and words in r.json()["error"]["message"], (body, r.text)
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(server.url + "/v1/completions", content=b"x" * (2 << 20), timeout=30)
    assert r.status_code == 413
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "wizard", "content": "x"}]},
                   timeout=30)
    assert r.status_code == 400 and "role" in r.json()["error"]["message"]


def test_overload_is_429_and_the_server_survives(served_artifact):
    s = Server(served_artifact, "--max-batch", "1", "--max-queue", "1")
    try:
        def one(i: int) -> int:
            r = httpx.post(s.url + "/v1/completions", json={"prompt": "q" * (i + 1), "max_tokens": 480,
                                                            "temperature": 0}, timeout=120)
            if r.status_code == 429:
                assert r.json()["error"]["code"] == "server_busy" and r.headers.get("retry-after")
            return r.status_code

        with ThreadPoolExecutor(12) as ex:
            codes = list(ex.map(one, range(12)))
        assert set(codes) <= {200, 429} and codes.count(429) >= 1 and codes.count(200) >= 1
        assert httpx.post(s.url + "/v1/completions", json={"prompt": "ok", "max_tokens": 2}, timeout=60).status_code == 200
    finally:
        s.stop()


def test_lfm3_concurrent_clients_over_the_window(lfm3_models, tmp_path_factory):
    """An LFM3 artifact (sliding window 8, ring state per slot) served to 8 concurrent clients, prompts shorter and
    longer than the window and the prefill chunk, more clients than slots (slots reused): each completion equals
    Engine.generate."""
    from lfmc.compile import compile_model

    art = compile_model(lfm3_models["lfm3-a"], tmp_path_factory.mktemp("lfm3srv") / "a", max_batch=3,
                        max_context=256, prefill_chunk=8)
    eng = Engine(art)
    rng = np.random.default_rng(8)
    prompts = ["".join(chr(int(c)) for c in rng.integers(97, 123, int(n))) for n in (3, 9, 30, 1, 17, 44, 8, 25)]
    want = [eng.generate(p, 20).tokens for p in prompts]
    s = Server(art)
    try:
        cl = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60)

        def one(i: int) -> list[int]:
            r = cl.completions.create(model="tiny", prompt=prompts[i], max_tokens=20, temperature=0)
            return r.choices[0].model_extra["tokens"]

        with ThreadPoolExecutor(8) as ex:
            got = list(ex.map(one, range(8)))
    finally:
        s.stop()
    assert got == want


def test_speculative_serving_equals_generate(served_artifact, engine):
    """lfmc serve --draft ART (the artifact drafting for itself: every draft accepted): concurrent completions,
    streamed and not, equal Engine.generate's, and /metrics counts the drafted and accepted tokens."""
    s = Server(served_artifact, "--draft", str(served_artifact), "--draft-k", "3")
    try:
        def one(p: str) -> list[int]:
            r = httpx.post(s.url + "/v1/completions", json={"prompt": p, "max_tokens": 20, "temperature": 0},
                           timeout=120).json()
            return r["choices"][0]["tokens"]

        want = [engine.generate(p, 20).tokens for p in PROMPTS]      # (an engine is not thread-safe)
        with ThreadPoolExecutor(4) as ex:
            assert list(ex.map(one, PROMPTS)) == want
        m = httpx.get(s.url + "/metrics", timeout=10).text
        counts = {ln.split()[0]: float(ln.split()[1]) for ln in m.splitlines()
                  if ln.startswith("lfmc_speculative_")}
        assert counts["lfmc_speculative_accepted_tokens_total"] == counts["lfmc_speculative_drafted_tokens_total"] > 0
    finally:
        s.stop()
