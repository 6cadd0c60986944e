"""`lfmc serve`'s OpenAI features, driven by the official openai client: structured output (``json_schema`` /
``json_object`` through the grammar engine, always closed in budget at temperature 1 on random weights),
tool calls in LFM2's format (forced by tool_choice through a grammar over the vocabulary's tool-call tokens,
parsed into ``tool_calls``, streaming too), ``logprobs`` equal to the log-softmax of the engine's logits,
``n`` choices sharing one prefill, ``stream_options.include_usage``, ``logit_bias`` and penalties,
``/metrics`` in Prometheus format, ``--api-key``, and chunked prefill that keeps greedy answers identical."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from lfmc.runtime import Engine
from lfmc.runtime.chat import render_chat
from lfmc.runtime.sampling import log_softmax, penalize

from .test_server import Server

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")
pytest.importorskip("prometheus_client")

TOOL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|tool_call_start|>", "<|tool_call_end|>", "<|tool_list_start|>",
               "<|tool_list_end|>", "<|tool_response_start|>", "<|tool_response_end|>"]


def byte_bpe_with_specials() -> str:
    """A byte-level BPE tokenizer.json (every byte a token, ids 0-255) with LFM2's chat and tool-call special
    tokens after them (ids 256-263): the layout of a real LFM2 vocabulary, small enough for a test model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(TOOL_TOKENS)
    return tok.to_str()


@pytest.fixture(scope="module")
def tool_artifact(tiny_models, tmp_path_factory):
    """dense-b (vocabulary 320) with the byte-level tokenizer and LFM2's special tokens."""
    from lfmc.compile import compile_model
    from lfmc.ir.model import Model

    m = tiny_models["dense-b"]
    m = Model(m.graph, m.weights, m.provenance, tokenizer=byte_bpe_with_specials())
    return compile_model(m, tmp_path_factory.mktemp("tools") / "dense-b.host", max_batch=4, max_context=512,
                         prefill_chunk=16)


@pytest.fixture(scope="module")
def server(tool_artifact):
    s = Server(tool_artifact, "--prefill-budget", "16")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def engine(tool_artifact):
    return Engine(tool_artifact)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "score", "kind", "tags"],
          "properties": {"name": {"type": "string"}, "score": {"type": "number"},
                         "kind": {"enum": ["red", "green", "blue"]},
                         "tags": {"type": "array", "items": {"type": "string"}}}}


def test_json_schema_always_parses_and_validates(client):
    """Temperature 1 on random weights: every answer is JSON that validates, closed within max_tokens (the
    grammar steers to a close when the budget runs low), including budgets barely above the shortest answer."""
    fmt = {"type": "json_schema", "json_schema": {"name": "item", "schema": SCHEMA, "strict": True}}
    msgs = [{"role": "user", "content": "Describe an item."}]

    def one(i: int) -> tuple[str, str]:
        r = client.chat.completions.create(model="tiny", messages=msgs, temperature=1.0, seed=i,
                                           max_tokens=(60, 120, 400)[i % 3], response_format=fmt)
        return r.choices[0].message.content, r.choices[0].finish_reason

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(one, range(24)))
    for text, reason in got:
        jsonschema.validate(json.loads(text), SCHEMA)
        assert reason == "stop", (text, reason)
    assert len({t for t, _ in got}) > 12                   # sampled, not one forced answer


def test_batched_grammar_masks_equal_each_alone(engine, client):
    """compute_masks (one llguidance executor call for a step's constrained sequences) gives every constraint
    the mask it computes alone, at different grammar states; and seeded json_schema answers are the same when
    requests run concurrently (masks batched) as one at a time."""
    from lfmc.runtime.structured import Constraint, GrammarVocab, compute_masks, json_grammar

    vocab = GrammarVocab(engine)
    fmt = {"type": "json_schema", "json_schema": {"name": "item", "schema": SCHEMA}}
    rng = np.random.default_rng(0)
    cons = []
    for k in range(6):
        c = Constraint(vocab, json_grammar(fmt) if k % 2 else json_grammar({"type": "json_object"}))
        for _ in range(int(rng.integers(0, 12))):       # walk each to its own state (an open one)
            ok = np.flatnonzero(c.allowed())
            ok = ok[ok != vocab.eos]
            if c.m.is_accepting() or not len(ok):
                break
            c.consume(int(rng.choice(ok)))
        cons.append(c)
    alone = [c.allowed().copy() for c in cons if not c.m.is_stopped()]
    compute_masks(cons)
    cons = [c for c in cons if not c.m.is_stopped()]      # (a walk may have closed its JSON: nothing follows)
    assert len(cons) >= 4 and all(c._mask is not None for c in cons)
    for c, a in zip(cons, alone):
        assert np.array_equal(c.allowed(), a)
    cons[0].consume(int(np.flatnonzero(cons[0].allowed())[0]))
    assert cons[0]._mask is None                          # consuming invalidates the mask computed ahead

    msgs = [{"role": "user", "content": "Describe an item."}]

    def one(i: int) -> str:
        return client.chat.completions.create(model="tiny", messages=msgs, temperature=1.0, seed=100 + i,
                                              max_tokens=90, response_format=fmt).choices[0].message.content

    from concurrent.futures import ThreadPoolExecutor

    seq = [one(i) for i in range(4)]
    with ThreadPoolExecutor(4) as ex:
        assert list(ex.map(one, range(4))) == seq


def test_json_object_and_streaming(client):
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "json please"}], temperature=1.0, seed=5, max_tokens=80,
        response_format={"type": "json_object"}, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(json.loads(text), dict)


def test_bad_schema_is_a_400(server):
    r = httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                           "parameters": {"type": "object", "required": ["city"],
                                                          "properties": {"city": {"type": "string"},
                                                                         "days": {"type": "integer"},
                                                                         "unit": {"enum": ["c", "f"]}}}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {
             "tz": {"type": "string"}}}}}]


def _check_call(call, names=("get_weather", "get_time")):
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert isinstance(args["city"], str)
        assert set(args) <= {"city", "days", "unit"}
        assert isinstance(args.get("days", 0), int) and args.get("unit", "c") in ("c", "f")
    return args


def test_tool_calls_required_and_named(client, engine):
    """tool_choice required: the reply is a call block in LFM2's format (the model's own sampled tokens under
    the grammar), parsed into tool_calls; a named choice calls that function; the prompt lists the tools in
    LFM2's layout."""
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    for seed in range(4):
        r = client.chat.completions.create(model="tiny", messages=msgs, tools=TOOLS, tool_choice="required",
                                           temperature=1.0, seed=seed, max_tokens=120)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.tool_calls, c
        for call in c.message.tool_calls:
            _check_call(call)
        toks = c.model_extra["tokens"]                           # the block's tokens were generated, not mocked
        assert toks[0] == engine.tokenizer.token_id("<|tool_call_start|>")
        assert engine.tokenizer.token_id("<|tool_call_end|>") in toks
    r = client.chat.completions.create(model="tiny", messages=msgs, tools=TOOLS, temperature=1.0, seed=1,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}},
                                       max_tokens=120)
    assert all(c.function.name == "get_time" for c in r.choices[0].message.tool_calls)
    prompt = render_chat(msgs, tools=TOOLS)
    assert "List of tools: <|tool_list_start|>" in prompt and '"get_weather"' in prompt


def test_tool_calls_stream(client):
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "time?"}], tools=TOOLS, tool_choice="required",
        temperature=1.0, seed=3, max_tokens=120, stream=True))
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert calls and all(tc.function.name in ("get_weather", "get_time") for tc in calls)
    assert [tc.index for tc in calls] == list(range(len(calls)))
    json.loads(calls[0].function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_call_parsing_of_auto_replies():
    """tool_choice auto: whatever the model writes is parsed; a block that is not a call list stays text."""
    from lfmc.runtime.tools import split_reply

    content, calls = split_reply('Sure. <|tool_call_start|>[get_weather(city="Paris", days=2), '
                                 'get_time(tz=None)]<|tool_call_end|>')
    assert content == "Sure." and [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "days": 2}
    content, calls = split_reply("<|tool_call_start|>[__import__('os')]<|tool_call_end|>")
    assert calls == [] and "__import__" in content


def test_tools_refused_without_the_tokens(served_artifact):
    """The byte-vocabulary model has no tool-call tokens: tools are refused with a clear error."""
    s = Server(served_artifact)
    try:
        r = httpx.post(s.url + "/v1/chat/completions", timeout=30, json={
            "messages": [{"role": "user", "content": "x"}], "tools": TOOLS})
        assert r.status_code == 400 and "tool-call tokens" in r.json()["error"]["message"]
    finally:
        s.stop()


@pytest.mark.parametrize("prompt", ["Hello", "a longer prompt than one prefill chunk of sixteen tokens"])
def test_logprobs_are_log_softmax_of_the_logits(client, engine, prompt):
    """Greedy with logprobs: every token's logprob and top-5 equal log-softmax of the engine's own logits
    (prefill, then decode after prefill), to 1e-4."""
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=6, temperature=0, logprobs=5)
    lp = r.choices[0].logprobs
    toks = r.choices[0].model_extra["tokens"]
    s = engine.new_sequence()
    try:
        logits = engine.prefill(s, engine.encode(prompt))
        for i, t in enumerate(toks):
            ref = log_softmax(logits)
            assert t == int(np.argmax(logits))
            assert abs(lp.token_logprobs[i] - ref[t]) < 1e-4
            top = sorted(lp.top_logprobs[i].values(), reverse=True)
            assert np.allclose(top, np.sort(ref)[::-1][:5], atol=1e-4)
            logits = engine.decode([s], [t])[0]
    finally:
        engine.release(s)
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}], max_tokens=3,
                                       temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == 3 and all(len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob == c.logprob
                                     for c in content)


def _metric(server, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics", timeout=10).text
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == name and not smp.labels:
                return smp.value
    raise AssertionError(f"{name} not in /metrics")


def test_n_choices_share_one_prefill(client, server, engine):
    """n = 3 prefills the prompt once (the prefill counter grows by the prompt's length, not three times it);
    greedy choices are identical to a single answer, sampled ones differ."""
    prompt = "The same prompt for three choices"
    before = _metric(server, "lfmc_prefill_tokens_total")
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, n=3)
    after = _metric(server, "lfmc_prefill_tokens_total")
    assert after - before == len(engine.encode(prompt))
    want = engine.generate(prompt, 8, stop=[]).tokens
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.model_extra["tokens"][:len(c.model_extra["tokens"])] == want[:len(c.model_extra["tokens"])]
               for c in r.choices)
    assert r.usage.prompt_tokens == len(engine.encode(prompt))
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=1.5, n=3, seed=7)
    assert len({tuple(c.model_extra["tokens"]) for c in r.choices}) > 1
    parts = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=4, temperature=0, n=2,
                                           stream=True))
    assert {p.choices[0].index for p in parts if p.choices} == {0, 1}


def test_include_usage_and_metrics(client, server):
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=5, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for name in ("lfmc_queue_length", "lfmc_running_sequences", "lfmc_generation_tokens_per_second",
                 "lfmc_time_to_first_token_seconds_bucket", "lfmc_inter_token_latency_seconds_bucket"):
        assert name in text
    assert _metric(server, "lfmc_generation_tokens_total") >= 5


def test_logit_bias_and_penalties(client, engine):
    """A +100 bias makes greedy pick that token every step; penalties follow OpenAI's formula."""
    r = client.completions.create(model="tiny", prompt="abc", max_tokens=5, temperature=0, logit_bias={"88": 100})
    assert r.choices[0].model_extra["tokens"] == [88] * 5
    x = np.array([1.0, -2.0, 3.0, 0.5], np.float32)
    got = penalize(x, {2: 3, 1: 1}, frozenset({0}), presence=0.5, frequency=0.25, repetition=2.0)
    assert np.allclose(got, [0.5, -4.0 - 0.75, 1.5 - 1.25, 0.5])
    plain = client.completions.create(model="tiny", prompt="abc", max_tokens=24, temperature=0)
    pen = client.completions.create(model="tiny", prompt="abc", max_tokens=24, temperature=0, frequency_penalty=2.0,
                                    presence_penalty=2.0)
    t0, t1 = plain.choices[0].model_extra["tokens"], pen.choices[0].model_extra["tokens"]
    assert t0 != t1 and len(set(t1)) >= len(set(t0))


def test_api_key(tool_artifact):
    s = Server(tool_artifact, "--api-key", "sekrit")
    try:
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(s.url + "/metrics", timeout=10).status_code == 401
        assert httpx.get(s.url + "/health", timeout=10).status_code == 200
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="sekrit", max_retries=0)
        assert c.completions.create(model="tiny", prompt="x", max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0).models.list()
    finally:
        s.stop()
    p = subprocess.run([sys.executable, "-m", "lfmc", "serve", str(tool_artifact), "--host", "0.0.0.0", "--port",
                        "1"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "API key" in p.stderr


def test_chunked_prefill_keeps_answers_and_interleaves(tool_artifact, engine):
    """Long prompts arriving while streams decode are prefilled in budgets of 16 tokens between decode steps
    (steps carry both), and every greedy answer equals Engine.generate alone."""
    from lfmc.runtime.batcher import Batcher, Request

    b = Batcher(Engine(tool_artifact), prefill_budget=16)
    try:
        rng = np.random.default_rng(0)
        prompts = [rng.integers(0, 256, int(n)).tolist() for n in (5, 7, 120, 200, 90, 3)]
        outs = [[] for _ in prompts]
        done = threading.Semaphore(0)

        def sink(i):
            return lambda ev: outs[i].append(int(ev[1])) if ev[0] == "token" else (
                done.release() if ev[0] == "done" else None)

        for i, p in enumerate(prompts):
            b.submit(Request(p, 30, sink(i)))
            time.sleep(0.01 if i < 2 else 0.0)
        for _ in prompts:
            assert done.acquire(timeout=120)
        for p, o in zip(prompts, outs):
            assert o == engine.generate(p, 30, stop=[]).tokens
        assert b.stats["mixed_steps"] > 0 and b.stats["prefill_calls"] > len(prompts)
    finally:
        b.close()
