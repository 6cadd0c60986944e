"""An OpenAI-compatible HTTP server over the runtime (FastAPI + uvicorn): ``/v1/completions``,
``/v1/chat/completions`` (streaming as server-sent events), ``/v1/models``, ``/health``, ``/metrics``
(Prometheus).

Beyond text: ``response_format`` (``json_object``, ``json_schema``) and tools (``tools``, ``tool_choice``, in
LFM2's call format) through a grammar applied as a token mask (:mod:`lfmc.runtime.structured`,
:mod:`lfmc.runtime.tools`); ``logprobs`` / ``top_logprobs``; ``n`` choices sharing one prefill;
``stream_options.include_usage``; ``logit_bias``, ``presence_penalty``, ``frequency_penalty`` and
``repetition_penalty``. ``--api-key``: every ``/v1`` route and ``/metrics`` want ``Authorization: Bearer KEY``.

Concurrent requests share decode steps through :class:`~lfmc.runtime.batcher.Batcher`; a full waiting queue is
HTTP 429, a request that can never fit (prompt + max_tokens over the context) is 400, a body over the size limit
is 413. Errors have OpenAI's shape (``{"error": {"message", "type", "code"}}``). A client that disconnects
mid-stream cancels its request, which frees its slot at the next decode step. Every choice also carries the
generated token ids (``tokens``, an lfmc extension) so that clients without a tokenizer can use it.
"""
# (no ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations as objects)

import asyncio
import json
import sys
import threading
import time
import uuid
from typing import Any, AsyncIterator

from .batcher import Batcher, Overloaded, Request
from .chat import END_OF_TURN, image_urls, TextStream, render_chat
from .metrics import Metrics
from .engine import Engine
from .errors import EngineError

MAX_BODY_BYTES = 1 << 20
MAX_BODY_BYTES_VL = 16 << 20        # a vision-language artifact: requests carry images as data: URLs


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
           headers: dict[str, str] | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=status,
                        headers=headers)


MAX_JSON_DEPTH = 64
GIL_SWITCH_S = 0.0002   # lfmc serve's GIL switch interval (see serve)
PREFIX_CACHE_BYTES = 1 << 30


class _Mailbox:
    """Events from the batcher's worker thread to the event loop, handed over once per engine step: one loop
    wake-up per step instead of one per token, so the loop's work interrupts the engine's parallel kernels (which
    wait for their slowest thread) less often."""

    def __init__(self) -> None:
        self._items: list[tuple[Any, asyncio.Queue, Any]] = []
        self._lock = threading.Lock()

    def sink(self, loop: asyncio.AbstractEventLoop, q: asyncio.Queue):
        """The batcher's sink for one request's queue ``q`` on ``loop`` (called from the worker thread)."""
        def put(ev: Any) -> None:
            with self._lock:
                self._items.append((loop, q, ev))
        return put

    def flush(self) -> None:
        """Deliver what the step produced (the batcher calls this after every step)."""
        with self._lock:
            items, self._items = self._items, []
        by_loop: dict[Any, list] = {}
        for loop, q, ev in items:
            by_loop.setdefault(loop, []).append((q, ev))
        for loop, evs in by_loop.items():
            try:
                loop.call_soon_threadsafe(self._deliver, evs)
            except RuntimeError:                        # the loop is closed: its clients are gone
                pass

    @staticmethod
    def _deliver(evs: list) -> None:
        for q, ev in evs:
            q.put_nowait(ev)


def create_app(engine: Engine, model_id: str = "lfmc", max_queue: int = 64, max_body_bytes: int | None = None,
               local_images: str | None = None, api_key: str | None = None, prefill_budget: int | str | None = "auto",
               prefix_cache_bytes: int = PREFIX_CACHE_BYTES, speculate: str | Engine | None = None,
               draft_k: int = 4):
    """The FastAPI application; the batcher starts with it and stops at shutdown. ``local_images``: a directory
    whose files chat requests may name as images (``file://`` URLs or paths); without it only ``data:`` URLs are
    accepted. Images are never fetched from the network. ``api_key``: required as a bearer token on ``/v1`` and
    ``/metrics``. ``prefill_budget``: prompt tokens prefilled per step beside running decodes (a number, or "auto").
    ``prefix_cache_bytes``: host memory for the prefix cache (:mod:`lfmc.runtime.prefix_cache`; 0: none).
    ``speculate`` / ``draft_k``: speculative decoding in the batcher ("ngram" or a draft Engine; see
    :mod:`lfmc.runtime.batcher`)."""
    if max_body_bytes is None:
        max_body_bytes = MAX_BODY_BYTES_VL if engine.vision is not None else MAX_BODY_BYTES
    import hmac
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request as HttpRequest
    from fastapi.exceptions import RequestValidationError

    metrics = Metrics()
    from .prefix_cache import PrefixCache

    cache = PrefixCache(engine, prefix_cache_bytes) if prefix_cache_bytes > 0 and engine.state_ops else None
    api = _Api(engine, model_id, Batcher(engine, max_queue=max_queue, prefill_budget=prefill_budget,
                                         observer=metrics, prefix_cache=cache, speculate=speculate,
                                         draft_k=draft_k), max_body_bytes)
    api.local_images = local_images
    metrics.watch(api.batcher)
    api.batcher.on_step_end = api.mailbox.flush

    @asynccontextmanager
    async def lifespan(app):
        yield
        api.batcher.close()

    app = FastAPI(title="lfmc", lifespan=lifespan)
    app.state.batcher = api.batcher

    if api_key:
        want = api_key.encode()

        @app.middleware("http")
        async def check_key(request, call_next):
            if request.url.path.startswith("/v1") or request.url.path == "/metrics":
                got = request.headers.get("authorization", "")
                if not (got.startswith("Bearer ") and hmac.compare_digest(got[7:].strip().encode(), want)):
                    return _error(401, "missing or wrong API key (Authorization: Bearer KEY)",
                                  "invalid_request_error", "invalid_api_key")
            return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _error(400, f"invalid request: {where}: {first.get('msg', 'bad value')}")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, **api.batcher.load()}

    @app.get("/v1/models")
    async def models():
        return api.models()

    @app.get("/metrics")
    async def prometheus():
        from fastapi.responses import Response

        body, kind = metrics.render()
        return Response(body, media_type=kind)

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        return await api.answer(api.completions, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest):
        return await api.answer(api.chat_completions, request)

    return app


def _check_json(v: Any, where: str = "body") -> None:
    """Refuse what JSON allows but a prompt cannot hold: nesting deeper than MAX_JSON_DEPTH and strings with lone
    UTF-16 surrogates ("\\ud800"), which no tokenizer encodes. Iterative, so no input can exhaust the stack."""
    todo = [(v, 0)]
    while todo:
        x, depth = todo.pop()
        if depth > MAX_JSON_DEPTH:
            raise _Bad(400, f"the body nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                raise _Bad(400, f"{where}: a string holds a lone UTF-16 surrogate (not a character)") from None
        elif isinstance(x, dict):
            todo.extend((k, depth + 1) for k in x)
            todo.extend((y, depth + 1) for y in x.values())
        elif isinstance(x, list):
            todo.extend((y, depth + 1) for y in x)


class _Api:
    """The request handling behind the routes: parsing, validation, submission to the batcher, responses."""

    def __init__(self, engine: Engine, model_id: str, batcher: Batcher, max_body_bytes: int):
        self.engine, self.model_id, self.batcher, self.max_body_bytes = engine, model_id, batcher, max_body_bytes
        self.created = int(time.time())
        self.chat = engine.chat or {}
        self.local_images: str | None = None
        self._vocab = None
        self._vocab_lock = threading.Lock()
        self.mailbox = _Mailbox()

    def models(self) -> dict[str, Any]:
        e = self.engine
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "created": self.created,
                                            "owned_by": "lfmc", "max_context": e.max_context,
                                            "vocab_size": e.vocab_size, "eos_token_id": e.eos_token_id}]}

    async def answer(self, handler, request):
        try:
            return await handler(await self.body_of(request))
        except _Bad as e:
            return e.response()

    async def body_of(self, request) -> dict[str, Any]:
        limit = self.max_body_bytes
        n = request.headers.get("content-length")
        if n is not None and n.isdigit() and int(n) > limit:
            raise _Bad(413, f"request body over {limit} bytes", code="request_too_large")
        raw = bytearray()
        async for part in request.stream():              # never hold more than the limit
            raw += part
            if len(raw) > limit:
                raise _Bad(413, f"request body over {limit} bytes", code="request_too_large")
        try:
            body = json.loads(raw or b"null")
        except ValueError as e:
            raise _Bad(400, f"the body is not JSON: {e}") from None
        except RecursionError:
            raise _Bad(400, f"the body nests deeper than {MAX_JSON_DEPTH} levels") from None
        if not isinstance(body, dict):
            raise _Bad(400, "the body must be a JSON object")
        _check_json(body)
        return body

    def sampling(self, body: dict[str, Any], default_max: int) -> dict[str, Any]:
        def num(k: str, default, lo, hi, kind=float):
            v = body.get(k, default)
            if v is None:
                v = default
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise _Bad(400, f"{k} must be a number in [{lo}, {hi}]")
            if kind is int and int(v) != v:
                raise _Bad(400, f"{k} must be an integer")
            return kind(v)

        limit = self.engine.max_context
        V = self.engine.vocab_size
        bias = body.get("logit_bias") or {}
        if not isinstance(bias, dict) or len(bias) > V:
            raise _Bad(400, "logit_bias must map token ids to numbers in [-100, 100]")
        logit_bias = {}
        for k, v in bias.items():
            if not str(k).isdigit() or not 0 <= int(k) < V:
                raise _Bad(400, f"logit_bias: {k!r} is not a token id in [0, {V})")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -100 <= v <= 100:
                raise _Bad(400, f"logit_bias[{k}] must be a number in [-100, 100]")
            logit_bias[int(k)] = float(v)
        return {"max_tokens": num("max_completion_tokens" if "max_completion_tokens" in body else "max_tokens",
                                  default_max, 1, limit, int),
                "temperature": num("temperature", 1.0, 0.0, 100.0), "top_p": num("top_p", 1.0, 0.0, 1.0),
                "top_k": num("top_k", 0, 0, V, int),
                "seed": num("seed", 0, 0, 2 ** 63 - 1, int) if body.get("seed") is not None else None,
                "presence_penalty": num("presence_penalty", 0.0, -2.0, 2.0),
                "frequency_penalty": num("frequency_penalty", 0.0, -2.0, 2.0),
                "repetition_penalty": num("repetition_penalty", 1.0, 0.01, 10.0),
                "logit_bias": logit_bias, "n": num("n", 1, 1, self.engine.max_batch, int)}

    @staticmethod
    def logprobs_of(body: dict[str, Any], chat_mode: bool) -> int | None:
        """How many alternatives each token reports (None: no logprobs). Chat: ``logprobs: true`` with
        ``top_logprobs`` 0-20; completions: ``logprobs`` 0-20."""
        if chat_mode:
            on, k = body.get("logprobs"), body.get("top_logprobs")
            if on not in (None, True, False):
                raise _Bad(400, "logprobs must be true or false")
            if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= 20):
                raise _Bad(400, "top_logprobs must be an integer in [0, 20]")
            if k is not None and not on:
                raise _Bad(400, "top_logprobs needs logprobs: true")
            return (k or 0) if on else None
        k = body.get("logprobs")
        if k is None:
            return None
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= 20:
            raise _Bad(400, "logprobs must be an integer in [0, 20]")
        return k

    @staticmethod
    def stops_of(body: dict[str, Any]) -> list[str]:
        s = body.get("stop")
        if s is None:
            return []
        s = [s] if isinstance(s, str) else s
        if not isinstance(s, list) or len(s) > 4 or not all(isinstance(x, str) for x in s):
            raise _Bad(400, "stop must be a string or a list of at most 4 strings")
        return s

    def encode(self, text: str) -> list[int]:
        if self.engine.tokenizer is None:
            raise _Bad(400, "this artifact has no tokenizer: send the prompt as a list of token ids")
        return self.engine.tokenizer.encode(text)

    def grammar_vocab(self):
        """The vocabulary for grammars, built on first use (about a second for a 65k vocabulary)."""
        from .structured import GrammarVocab

        with self._vocab_lock:
            if self._vocab is None:
                self._vocab = GrammarVocab(self.engine)
            return self._vocab

    async def constraints(self, grammar: str | None, n: int) -> list[Any]:
        """One grammar state per choice (None without a grammar), built off the event loop."""
        if grammar is None:
            return [None] * n
        from .structured import Constraint

        def build():
            vocab = self.grammar_vocab()
            return [Constraint(vocab, grammar) for _ in range(n)]

        try:
            return await asyncio.to_thread(build)
        except EngineError as e:
            raise _Bad(400, str(e)) from None

    def start(self, ids: list[int], sp: dict[str, Any], stops: list[str], images: list | None = None,
              logprobs: int | None = None, constraints: list[Any] | None = None) -> list["_Choice"]:
        """Submit the request (its ``n`` choices as one request with forks); the choices' event streams."""
        loop = asyncio.get_running_loop()
        eos = self.engine.eos_token_id
        choices, reqs = [], []
        n = sp["n"]
        for i in range(n):
            q: asyncio.Queue = asyncio.Queue()
            seed = sp["seed"] + i if sp["seed"] is not None else None
            req = Request(ids, sp["max_tokens"], self.mailbox.sink(loop, q),
                          temperature=sp["temperature"], top_k=sp["top_k"], top_p=sp["top_p"], seed=seed,
                          stop_ids=frozenset({eos} if eos is not None else ()),
                          images=list(images or []) if i == 0 else [], logit_bias=sp["logit_bias"],
                          presence_penalty=sp["presence_penalty"], frequency_penalty=sp["frequency_penalty"],
                          repetition_penalty=sp["repetition_penalty"], logprobs=logprobs,
                          constraint=(constraints or [None] * n)[i])
            reqs.append(req)
            choices.append(_Choice(i, req, q, TextStream(self.engine.decode_text, stops)))
        reqs[0].forks = reqs[1:]
        try:
            self.batcher.submit(reqs[0])
        except Overloaded as e:
            raise _Bad(429, f"server busy: {e}; retry later", "rate_limit_exceeded", "server_busy",
                       {"Retry-After": "1"}) from None
        except EngineError as e:
            raise _Bad(400, str(e)) from None
        return choices

    def token_text(self, tok: int) -> tuple[str, list[int]]:
        """A token's text and bytes (logprobs entries); a token that is not UTF-8 on its own (part of a
        character) is written ``bytes:\\xNN...`` as OpenAI does, and an id without text (vocabulary padding)
        ``<|id|>``, so that distinct tokens keep distinct keys."""
        t = self.engine.tokenizer
        if t is None:
            return str(tok), []
        if hasattr(t, "token_bytes"):
            b = t.token_bytes(tok)
            if not b:
                return f"<|{tok}|>", []
            try:
                return b.decode("utf-8"), list(b)
            except UnicodeDecodeError:
                return "bytes:" + "".join(f"\\x{c:02x}" for c in b), list(b)
        s = t.decode([tok]) or ""
        return s, list(s.encode("utf-8"))

    def logprob_entry(self, tok: int, info: tuple[float, list[tuple[int, float]]]) -> dict[str, Any]:
        text, b = self.token_text(tok)
        tops = []
        for t, lp in info[1]:
            tt, tb = self.token_text(t)
            tops.append({"token": tt, "logprob": lp, "bytes": tb, "id": t})
        return {"token": text, "logprob": info[0], "bytes": b, "id": tok, "top_logprobs": tops}

    @staticmethod
    def completion_logprobs(entries: list[dict[str, Any]], offset0: int = 0) -> dict[str, Any]:
        """The legacy completions shape of logprobs entries."""
        offs, o = [], offset0
        for e in entries:
            offs.append(o)
            o += len(e["token"])
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
                "text_offset": offs}

    async def respond(self, body: dict[str, Any], ids: list[int], chat_mode: bool, stops: list[str],
                      images: list | None = None, tools: dict[str, Any] | None = None):
        ctx = self.engine.max_context
        if len(ids) >= ctx:
            raise _Bad(400, f"the prompt takes {len(ids)} tokens (images included), the context is {ctx}")
        sp = self.sampling(body, 16 if not chat_mode else ctx - len(ids))
        sp["max_tokens"] = min(sp["max_tokens"], max(1, ctx - len(ids)))
        logprobs = self.logprobs_of(body, chat_mode)
        grammar = tools.get("grammar") if tools else None
        if grammar is None:
            from .structured import json_grammar

            try:
                grammar = json_grammar(body.get("response_format"))
            except EngineError as e:
                raise _Bad(400, str(e)) from None
        constraints = await self.constraints(grammar, sp["n"])
        choices = self.start(ids, sp, stops, images, logprobs, constraints)
        if tools and tools.get("parse"):
            for c in choices:
                c.tool_filter(self.engine)
        rid = ("chatcmpl-" if chat_mode else "cmpl-") + uuid.uuid4().hex[:24]
        opts = body.get("stream_options") or {}
        if body.get("stream"):
            from fastapi.responses import StreamingResponse

            usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
            return StreamingResponse(self.sse(choices, rid, chat_mode, usage, len(ids)),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        out = []
        try:
            for c in choices:
                async for _ in c.events():
                    pass
        except EngineError as e:
            for c in choices:
                c.req.cancel()
            return _error(500, f"generation failed: {e}", "server_error")
        finally:
            for c in choices:
                c.req.cancel()
        for c in choices:
            choice: dict[str, Any] = {"index": c.index, "finish_reason": c.finish, "tokens": c.ids}
            entries = [self.logprob_entry(t, info) for t, info in c.logprobs]
            if chat_mode:
                msg: dict[str, Any] = {"role": "assistant", "content": c.text.text}
                if c.calls:
                    msg["tool_calls"] = c.calls
                    msg["content"] = c.text.text.strip() or None
                choice["message"] = msg
                choice["logprobs"] = {"content": entries} if logprobs is not None else None
            else:
                choice["text"] = c.text.text
                choice["logprobs"] = self.completion_logprobs(entries) if logprobs is not None else None
            out.append(choice)
        gen = sum(len(c.ids) for c in choices)
        return {"id": rid, "object": "chat.completion" if chat_mode else "text_completion", "created": int(time.time()),
                "model": self.model_id, "choices": out,
                "usage": {"prompt_tokens": len(ids), "completion_tokens": gen, "total_tokens": len(ids) + gen,
                          "prompt_tokens_details": {"cached_tokens": choices[0].req.cached}}}

    async def sse(self, choices: list["_Choice"], rid: str, chat_mode: bool, include_usage: bool,
                  prompt_tokens: int) -> AsyncIterator[bytes]:
        """The server-sent events of a streamed answer (its choices interleaved as their tokens come), ending
        with the usage chunk when asked and ``data: [DONE]``."""
        now = int(time.time())
        o = "chat.completion.chunk" if chat_mode else "text_completion"

        def frame(cs: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
            d: dict[str, Any] = {"id": rid, "object": o, "created": now, "model": self.model_id, "choices": cs}
            if include_usage:
                d["usage"] = usage
            return f"data: {json.dumps(d)}\n\n".encode()

        def piece(c: "_Choice", ev: tuple) -> dict[str, Any]:
            kind, delta, reason, entries, calls = ev
            lp = None
            if entries is not None:
                es = [self.logprob_entry(t, info) for t, info in entries]
                lp = {"content": es} if chat_mode else self.completion_logprobs(es)
            if chat_mode:
                d: dict[str, Any] = {"role": "assistant", "content": ""} if kind == "first" else {}
                if delta:
                    d["content"] = delta
                if calls:
                    d["tool_calls"] = [dict(x, index=i) for i, x in enumerate(calls, len(c.calls) - len(calls))]
                return {"index": c.index, "delta": d, "finish_reason": reason, "logprobs": lp}
            return {"index": c.index, "text": delta or "", "finish_reason": reason, "logprobs": lp}

        merged: asyncio.Queue = asyncio.Queue()

        async def pump(c: "_Choice") -> None:
            try:
                async for ev in c.events():
                    await merged.put((c, ev))
            except EngineError as e:
                await merged.put((c, ("error", str(e))))
            finally:
                await merged.put((c, None))

        tasks = [asyncio.create_task(pump(c)) for c in choices]
        try:  # a client that goes away closes this generator: the finally cancels its requests
            if chat_mode:
                for c in choices:
                    yield frame([piece(c, ("first", None, None, None, None))])
            open_ = len(choices)
            while open_:
                c, ev = await merged.get()
                if ev is None:
                    open_ -= 1
                    continue
                if ev[0] == "error":
                    yield f"data: {json.dumps({'error': {'message': ev[1], 'type': 'server_error'}})}\n\n".encode()
                    continue
                yield frame([piece(c, ev)])
            if include_usage:
                gen = sum(len(c.ids) for c in choices)
                yield frame([], {"prompt_tokens": prompt_tokens, "completion_tokens": gen,
                                 "total_tokens": prompt_tokens + gen,
                                 "prompt_tokens_details": {"cached_tokens": choices[0].req.cached}})
        finally:
            for c in choices:
                c.req.cancel()
            for t in tasks:
                t.cancel()
        yield b"data: [DONE]\n\n"

    async def completions(self, body: dict[str, Any]):
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
            p = p[0]
        if isinstance(p, str):
            ids = self.encode(p)
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            ids = list(p)
        else:
            raise _Bad(400, "prompt must be a non-empty string or a list of token ids (one prompt)")
        if not ids:
            raise _Bad(400, "the prompt is empty")
        return await self.respond(body, ids, False, self.stops_of(body))

    def tools_of(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None]:
        """The request's tools for the template and how the reply is handled: ``parse`` (tool-call blocks become
        ``tool_calls``) and ``grammar`` (tool_choice required / named: only calls of the offered tools)."""
        if body.get("tools") is None:
            if body.get("tool_choice") not in (None, "none", "auto"):
                raise _Bad(400, "tool_choice needs tools")
            return None, None
        from .tools import call_grammar, check_tools

        try:
            functions, choice = check_tools(body["tools"], body.get("tool_choice"), self.engine.tokenizer)
        except EngineError as e:
            raise _Bad(400, str(e)) from None
        if choice == "none":
            return None, None
        if body.get("response_format") not in (None, {"type": "text"}) and choice != "auto":
            raise _Bad(400, "response_format and a required tool_choice cannot both constrain the reply")
        how: dict[str, Any] = {"parse": True}
        if choice != "auto":
            from .structured import lark_grammar

            how["grammar"] = lark_grammar(call_grammar(functions, choice))
        return body["tools"], how

    async def chat_completions(self, body: dict[str, Any]):
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise _Bad(400, "messages must be a non-empty list of {role, content} objects")
        c = self.chat
        tools, how = self.tools_of(body)
        try:
            urls = image_urls(msgs)
        except EngineError as e:
            raise _Bad(400, str(e)) from None
        if urls and self.engine.vision is None:
            raise _Bad(400, "this model takes no images (not a vision-language artifact)")
        try:
            prompt = render_chat(msgs, c.get("template"), c.get("bos_token", ""), c.get("eos_token", ""),
                                 tools=tools)
        except EngineError as e:
            raise _Bad(400, str(e)) from None
        stops = self.stops_of(body) + [END_OF_TURN]
        if not urls:
            return await self.respond(body, self.encode(prompt), True, stops, tools=how)
        data = [self.image_bytes(u) for u in urls]
        try:            # decoding and preprocessing in a worker thread: the event loop keeps serving
            ids, processed = await asyncio.to_thread(self.engine.expand_images, prompt, data)
        except EngineError as e:
            raise _Bad(400, str(e)) from None
        return await self.respond(body, ids, True, stops, processed, tools=how)

    def image_bytes(self, url: str) -> bytes:
        """The encoded image of an ``image_url``: a base64 ``data:`` URL, or a file under the server's
        ``--allow-local-images`` directory; never a network fetch."""
        import base64
        import binascii
        import os

        limit = self.max_body_bytes
        if url.startswith("data:"):
            head, sep, payload = url.partition(",")
            if not sep or not head.endswith(";base64"):
                raise _Bad(400, "an image data: URL must be base64 (data:image/png;base64,...)")
            if len(payload) * 3 // 4 > limit:
                raise _Bad(413, f"the image is larger than {limit} bytes")
            try:
                return base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise _Bad(400, "the image data: URL is not valid base64") from None
        if url.startswith(("http://", "https://", "ftp://")):
            raise _Bad(400, "images are not fetched from the network: send the image as a data: URL")
        if self.local_images is None:
            raise _Bad(400, "local image paths are off (start lfmc serve with --allow-local-images DIR); send a "
                            "data: URL")
        path = url[len("file://"):] if url.startswith("file://") else url
        root = os.path.realpath(self.local_images)
        real = os.path.realpath(path)
        if os.path.commonpath([root, real]) != root:
            raise _Bad(400, f"image path {path!r} is outside the allowed directory")
        try:
            if os.path.getsize(real) > limit:
                raise _Bad(413, f"the image is larger than {limit} bytes")
            with open(real, "rb") as f:
                return f.read()
        except OSError as e:
            raise _Bad(400, f"image {path!r}: cannot read ({e.strerror or e})") from None


class _Choice:
    """One choice of an answer: its request, its event queue, its text so far, and what it collected (every
    token, log-probabilities, tool calls, the finish reason)."""

    def __init__(self, index: int, req: Request, q: asyncio.Queue, text: TextStream):
        self.index, self.req, self.q, self.text = index, req, q, text
        self.ids: list[int] = []
        self.logprobs: list[tuple[int, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.finish: str | None = None
        self.filter: Any = None

    def tool_filter(self, engine: Engine) -> None:
        """Tool-call blocks of the reply become ``calls`` instead of text."""
        from .tools import CALL_END, CALL_START, CallFilter

        tok = engine.tokenizer
        self.filter = CallFilter(tok.token_id(CALL_START), tok.token_id(CALL_END), engine.decode_text)

    async def events(self) -> AsyncIterator[tuple]:
        """("delta", text, finish reason or None, new (token, logprobs) pairs or None, new tool calls) until the
        request ends; cancels it if the consumer goes away."""
        want_lp = self.req.logprobs is not None
        try:
            while True:
                ev = await self.q.get()
                if ev[0] == "token":
                    tok = int(ev[1])
                    self.ids.append(tok)
                    lp = None
                    if want_lp:
                        self.logprobs.append((tok, ev[2]))
                        lp = [(tok, ev[2])]
                    show, calls = ([tok], []) if self.filter is None else self.filter.push(tok)
                    self.calls += calls
                    delta = ""
                    for t in show:
                        delta += self.text.push(t)
                        if self.text.stopped:
                            break
                    if self.text.stopped:
                        self.req.cancel()
                        self.finish = "tool_calls" if self.calls else "stop"
                        yield ("delta", delta, self.finish, lp, calls)
                        return
                    if delta or calls or lp:
                        yield ("delta", delta, None, lp, calls)
                elif ev[0] == "error":
                    raise EngineError(ev[1])
                else:
                    tail = "".join(self.text.push(t) for t in (self.filter.flush() if self.filter else []))
                    tail += self.text.push(None, final=True)
                    reason = "stop" if ev[1] in ("stop", "cancelled") else ev[1]
                    self.finish = "tool_calls" if self.calls and reason == "stop" else reason
                    yield ("delta", tail, self.finish, None, [])
                    return
        finally:
            self.req.cancel()


class _Bad(Exception):
    """An HTTP error answer raised inside a handler."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.args_ = (status, message, kind, code, headers)

    def response(self):
        return _error(*self.args_)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond this machine without an API key."""
    if host not in LOOPBACK and not host.startswith("127.") and not api_key:
        raise EngineError(f"listening on {host} (beyond this machine) needs an API key: pass --api-key KEY or set "
                          "LFMC_API_KEY")


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 8000, model_id: str = "lfmc", max_queue: int = 64,
          log_level: str = "warning", local_images: str | None = None, api_key: str | None = None,
          prefill_budget: int | str | None = "auto", prefix_cache_bytes: int = PREFIX_CACHE_BYTES,
          speculate: str | Engine | None = None, draft_k: int = 4) -> None:
    """Run the server until interrupted."""
    check_bind(host, api_key)
    # the batcher's worker comes back from each native engine step wanting the GIL while the event loop thread
    # may be writing streams: with Python's default 5 ms switch interval it can wait that long per step (measured:
    # 4 clients 77% -> 88% of the engine's rate with 0.2 ms)
    sys.setswitchinterval(GIL_SWITCH_S)
    try:
        import uvicorn
    except ImportError as e:
        raise EngineError(f"lfmc serve needs the serving extra ({e}): pip install 'lfmc[serve]'") from None
    uvicorn.run(create_app(engine, model_id, max_queue, local_images=local_images, api_key=api_key,
                           prefill_budget=prefill_budget, prefix_cache_bytes=prefix_cache_bytes,
                           speculate=speculate, draft_k=draft_k), host=host, port=port,
                log_level=log_level)
