"""The server's request parsing under random input (hypothesis): any JSON body, any bytes, on every endpoint, is
answered with a 2xx or a 4xx in OpenAI's error shape; never a 500, never a hang; the server keeps serving."""
from __future__ import annotations

import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from lfmc.runtime import Engine  # noqa: E402
from tests.fuzz import SCALE  # noqa: E402

FUZZ = settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def client(served_artifact):
    from fastapi.testclient import TestClient

    from lfmc.runtime.server import create_app

    with TestClient(create_app(Engine(served_artifact), "tiny", max_queue=8)) as c:
        yield c


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) |
                           st.text(max_size=20), lambda c: st.lists(c, max_size=4) |
                           st.dictionaries(st.text(max_size=10), c, max_size=4), max_leaves=10)
FIELDS = {"prompt": st.one_of(st.text(max_size=30), st.lists(st.integers(-5, 300), max_size=6), json_values),
          "messages": st.one_of(st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "x"]),
                                                                "content": st.one_of(st.text(max_size=20),
                                                                                     json_values)}), max_size=3),
                                json_values),
          "max_tokens": st.one_of(st.integers(-3, 40), json_values), "temperature": st.one_of(st.floats(-1, 3),
                                                                                               json_values),
          "top_p": json_values, "top_k": st.one_of(st.integers(-2, 300), json_values),
          "seed": st.one_of(st.integers(-3, 3), json_values),
          "stop": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=5), json_values),
          "stream": st.one_of(st.booleans(), json_values), "n": json_values, "model": json_values}
bodies = st.one_of(st.fixed_dictionaries({}, optional=FIELDS), json_values)


def _check(r) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        err = r.json()["error"]
        assert isinstance(err["message"], str) and err["message"]


@FUZZ
@given(body=bodies, path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
def test_random_json_bodies(client, body, path):
    if isinstance(body, dict) and isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 40:
        body["max_tokens"] = 40
    r = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    _check(r)
    if r.status_code == 200 and isinstance(body, dict) and body.get("stream") is True:
        assert r.text.rstrip().endswith("data: [DONE]")


@FUZZ
@given(raw=st.binary(max_size=200), path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
def test_random_bytes(client, raw, path):
    _check(client.post(path, content=raw))


def test_still_serving_after_the_fuzz(client):
    r = client.post("/v1/completions", json={"prompt": "ok", "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200 and len(r.json()["choices"][0]["tokens"]) >= 1
    assert client.get("/health").json()["active"] == 0


# only high or only low surrogates: a high one followed by a low one is a valid pair (one character) in JSON
surrogate_text = st.one_of(*(st.text(alphabet=st.characters(min_codepoint=lo, max_codepoint=hi, categories=["Cs"]),
                                     min_size=1, max_size=3) for lo, hi in ((0xD800, 0xDBFF), (0xDC00, 0xDFFF))))


@FUZZ
@given(depth=st.integers(65, 6000), path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
       kind=st.sampled_from(["[", '{"a":']))
def test_deeply_nested_bodies_are_400(client, depth, path, kind):
    """A body nested thousands of levels deep raised RecursionError inside json (a 500): now a 400."""
    close = "]" if kind == "[" else "}"
    raw = '{"prompt": ' + kind * depth + "1" + close * depth + "}"
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert "nests deeper" in r.json()["error"]["message"]


@FUZZ
@given(s=surrogate_text, field=st.sampled_from(["prompt", "content", "stop"]))
def test_lone_surrogates_are_400(client, s, field):
    """A prompt with a lone UTF-16 surrogate ("\\ud800", valid JSON, no character) was a 500 in the tokenizer."""
    if field == "content":
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi" + s}]}
    else:
        path, body = "/v1/completions", {"prompt": "hi" + s if field == "prompt" else "hi", "stop": [s]}
    r = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert "\\ud" in json.dumps(body)                 # the body really carries the escape
    assert r.status_code == 400, r.text
    assert "surrogate" in r.json()["error"]["message"]
