"""An OpenAI-compatible HTTP server over the runtime (FastAPI + uvicorn): ``/v1/completions``,
``/v1/chat/completions`` (streaming as server-sent events), ``/v1/models``, ``/health``.

Concurrent requests share decode steps through :class:`~lfmc.runtime.batcher.Batcher`; a full waiting queue is
HTTP 429, a request that can never fit (prompt + max_tokens over the context) is 400, a body over the size limit
is 413. Errors have OpenAI's shape (``{"error": {"message", "type", "code"}}``). A client that disconnects
mid-stream cancels its request, which frees its slot at the next decode step. Every choice also carries the
generated token ids (``tokens``, an lfmc extension) so that clients without a tokenizer can use it.
"""
# (no ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations as objects)

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator

from .batcher import Batcher, Overloaded, Request
from .chat import END_OF_TURN, image_urls, TextStream, render_chat
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


def create_app(engine: Engine, model_id: str = "lfmc", max_queue: int = 64, max_body_bytes: int | None = None,
               local_images: str | None = None):
    """The FastAPI application; the batcher starts with it and stops at shutdown. ``local_images``: a directory
    whose files chat requests may name as images (``file://`` URLs or paths); without it only ``data:`` URLs are
    accepted. Images are never fetched from the network."""
    if max_body_bytes is None:
        max_body_bytes = MAX_BODY_BYTES_VL if engine.vision is not None else MAX_BODY_BYTES
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request as HttpRequest
    from fastapi.exceptions import RequestValidationError

    api = _Api(engine, model_id, Batcher(engine, max_queue=max_queue), max_body_bytes)
    api.local_images = local_images

    @asynccontextmanager
    async def lifespan(app):
        yield
        api.batcher.close()

    app = FastAPI(title="lfmc", lifespan=lifespan)
    app.state.batcher = api.batcher

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

    def models(self) -> dict[str, Any]:
        e = self.engine
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "created": self.created,
                                            "owned_by": "lfmc", "max_context": e.max_context,
                                            "vocab_size": e.vocab_size}]}

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

        if body.get("n", 1) not in (1, None):
            raise _Bad(400, "only n = 1 is supported")
        limit = self.engine.max_context
        return {"max_tokens": num("max_completion_tokens" if "max_completion_tokens" in body else "max_tokens",
                                  default_max, 1, limit, int),
                "temperature": num("temperature", 1.0, 0.0, 100.0), "top_p": num("top_p", 1.0, 0.0, 1.0),
                "top_k": num("top_k", 0, 0, self.engine.vocab_size, int),
                "seed": num("seed", 0, 0, 2 ** 63 - 1, int) if body.get("seed") is not None else None}

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

    def start(self, ids: list[int], sp: dict[str, Any], stops: list[str],
              images: list | None = None) -> tuple[Request, asyncio.Queue, TextStream]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        eos = self.engine.eos_token_id
        req = Request(ids, sp["max_tokens"], lambda ev: loop.call_soon_threadsafe(q.put_nowait, ev),
                      temperature=sp["temperature"], top_k=sp["top_k"], top_p=sp["top_p"], seed=sp["seed"],
                      stop_ids=frozenset({eos} if eos is not None else ()), images=list(images or []))
        try:
            self.batcher.submit(req)
        except Overloaded as e:
            raise _Bad(429, f"server busy: {e}; retry later", "rate_limit_exceeded", "server_busy",
                       {"Retry-After": "1"}) from None
        except EngineError as e:
            raise _Bad(400, str(e)) from None
        return req, q, TextStream(self.engine.decode_text, stops)

    @staticmethod
    async def events(req: Request, q: asyncio.Queue, text: TextStream) -> AsyncIterator[tuple[str, str | None]]:
        """(delta text, finish reason or None) until the request ends; cancels it if the consumer goes away."""
        try:
            while True:
                ev = await q.get()
                if ev[0] == "token":
                    delta = text.push(int(ev[1]))
                    if text.stopped:
                        req.cancel()
                        yield delta, "stop"
                        return
                    if delta:
                        yield delta, None
                elif ev[0] == "error":
                    raise EngineError(ev[1])
                else:
                    reason = ev[1]
                    tail = text.push(None, final=True)
                    yield tail, ("stop" if reason in ("stop", "cancelled") else reason)
                    return
        finally:
            req.cancel()

    @staticmethod
    def usage(req: Request, text: TextStream) -> dict[str, int]:
        return {"prompt_tokens": len(req.prompt), "completion_tokens": len(text.ids),
                "total_tokens": len(req.prompt) + len(text.ids)}

    async def respond(self, body: dict[str, Any], ids: list[int], chat_mode: bool, stops: list[str],
                      images: list | None = None):
        ctx = self.engine.max_context
        if len(ids) >= ctx:
            raise _Bad(400, f"the prompt takes {len(ids)} tokens (images included), the context is {ctx}")
        sp = self.sampling(body, 16 if not chat_mode else ctx - len(ids))
        sp["max_tokens"] = min(sp["max_tokens"], max(1, ctx - len(ids)))
        req, q, text = self.start(ids, sp, stops, images)
        rid = ("chatcmpl-" if chat_mode else "cmpl-") + uuid.uuid4().hex[:24]
        if body.get("stream"):
            from fastapi.responses import StreamingResponse

            return StreamingResponse(self.sse(req, q, text, rid, chat_mode), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        reason = None
        try:
            async for _, r in self.events(req, q, text):
                reason = r or reason
        except EngineError as e:
            return _error(500, f"generation failed: {e}", "server_error")
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason, "logprobs": None, "tokens": text.ids}
        if chat_mode:
            choice["message"] = {"role": "assistant", "content": text.text}
        else:
            choice["text"] = text.text
        return {"id": rid, "object": "chat.completion" if chat_mode else "text_completion", "created": int(time.time()),
                "model": self.model_id, "choices": [choice], "usage": self.usage(req, text)}

    async def sse(self, req: Request, q: asyncio.Queue, text: TextStream, rid: str,
                  chat_mode: bool) -> AsyncIterator[bytes]:
        """The server-sent events of a streamed answer, ending with ``data: [DONE]``."""
        now = int(time.time())

        def chunk(delta: str | None, reason: str | None, first: bool = False) -> bytes:
            if chat_mode:
                d: dict[str, Any] = {"role": "assistant", "content": ""} if first else \
                    ({"content": delta} if delta else {})
                c = {"index": 0, "delta": d, "finish_reason": reason, "logprobs": None}
                o = "chat.completion.chunk"
            else:
                c = {"index": 0, "text": delta or "", "finish_reason": reason, "logprobs": None}
                o = "text_completion"
            return f"data: {json.dumps({'id': rid, 'object': o, 'created': now, 'model': self.model_id, 'choices': [c]})}\n\n".encode()

        if chat_mode:
            yield chunk(None, None, first=True)
        try:  # a client that goes away closes this generator: the finally cancels its request
            async for delta, reason in self.events(req, q, text):
                if reason is None:
                    yield chunk(delta, None)
                else:
                    if delta:
                        yield chunk(delta, None)
                    yield chunk(None, reason)
        except EngineError as e:
            yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n".encode()
        finally:
            req.cancel()
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

    async def chat_completions(self, body: dict[str, Any]):
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise _Bad(400, "messages must be a non-empty list of {role, content} objects")
        c = self.chat
        try:
            urls = image_urls(msgs)
        except EngineError as e:
            raise _Bad(400, str(e)) from None
        if urls and self.engine.vision is None:
            raise _Bad(400, "this model takes no images (not a vision-language artifact)")
        try:
            prompt = render_chat(msgs, c.get("template"), c.get("bos_token", ""), c.get("eos_token", ""))
        except EngineError as e:
            raise _Bad(400, str(e)) from None
        if not urls:
            return await self.respond(body, self.encode(prompt), True, self.stops_of(body) + [END_OF_TURN])
        data = [self.image_bytes(u) for u in urls]
        try:            # decoding and preprocessing in a worker thread: the event loop keeps serving
            ids, processed = await asyncio.to_thread(self.engine.expand_images, prompt, data)
        except EngineError as e:
            raise _Bad(400, str(e)) from None
        return await self.respond(body, ids, True, self.stops_of(body) + [END_OF_TURN], processed)

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


class _Bad(Exception):
    """An HTTP error answer raised inside a handler."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.args_ = (status, message, kind, code, headers)

    def response(self):
        return _error(*self.args_)


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 8000, model_id: str = "lfmc", max_queue: int = 64,
          log_level: str = "warning", local_images: str | None = None) -> None:
    """Run the server until interrupted."""
    try:
        import uvicorn
    except ImportError as e:
        raise EngineError(f"lfmc serve needs the serving extra ({e}): pip install 'lfmc[serve]'") from None
    uvicorn.run(create_app(engine, model_id, max_queue, local_images=local_images), host=host, port=port,
                log_level=log_level)
