"""Chat prompts: the checkpoint's chat template (Jinja, from its tokenizer_config.json, carried in the artifact's
manifest) rendered in a sandbox, or LFM2's ChatML layout when the checkpoint had none."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from .errors import EngineError

END_OF_TURN = "<|im_end|>"


IMAGE_MARKER = "<image>"        # where an image part stood (lfmc.runtime.vision expands it into image tokens)


def message_text(content: Any) -> str:
    """OpenAI message content: a string, or a list of parts: text parts give their text, image parts
    (``image_url``) the image placeholder ``<image>``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for p in content:
            if isinstance(p, dict) and p.get("type", "text") == "text":
                out.append(str(p.get("text", "")))
            elif isinstance(p, dict) and p.get("type") == "image_url":
                out.append(IMAGE_MARKER)
        return "".join(out)
    raise EngineError(f"message content must be a string or a list of parts, not {type(content).__name__}")


def image_urls(messages: Sequence[Any]) -> list[str]:
    """The ``image_url`` parts of chat messages, in order: ``{"type": "image_url", "image_url": {"url": ...}}``
    (or the url as a plain string)."""
    out = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        for p in content if isinstance(content, list) else []:
            if isinstance(p, dict) and p.get("type") == "image_url":
                u = p.get("image_url")
                u = u.get("url") if isinstance(u, dict) else u
                if not isinstance(u, str) or not u:
                    raise EngineError("an image_url part needs {\"url\": \"data:image/...;base64,...\"}")
                out.append(u)
    return out


def _turn_text(m: dict[str, Any]) -> str:
    """A message's text; an assistant turn's earlier ``tool_calls`` written back in LFM2's call format."""
    text = message_text(m.get("content"))
    calls = m.get("tool_calls") if m.get("role") == "assistant" else None
    if calls:
        from .tools import calls_text

        text += calls_text(calls)
    return text


def _default(messages: Sequence[dict[str, Any]], add_generation_prompt: bool, bos: str) -> str:
    out = [bos]
    for m in messages:
        out.append(f"<|im_start|>{m['role']}\n{_turn_text(m)}{END_OF_TURN}\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def render_chat(messages: Sequence[dict[str, Any]], template: str | None = None, bos_token: str = "",
                eos_token: str = "", add_generation_prompt: bool = True,
                tools: list[dict[str, Any]] | None = None) -> str:
    """The prompt text for ``messages`` ([{role, content}]). A checkpoint template runs in Jinja's immutable
    sandbox (it is data from the artifact, never trusted as code). ``tools``: OpenAI tool definitions, handed to
    the template as ``tools`` (LFM2's templates list them in the system turn); without a template they go into the
    system turn in LFM2's layout (:func:`lfmc.runtime.tools.with_tools`)."""
    for m in messages:
        if not isinstance(m, dict) or "role" not in m:
            raise EngineError("every message needs a role and a content")
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise EngineError(f"unknown message role {m['role']!r}")
    if not template:
        if tools:
            from .tools import with_tools

            messages = with_tools(list(messages), [t["function"] for t in tools])
        return _default(messages, add_generation_prompt, bos_token)
    try:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:
        raise EngineError(f"this artifact's chat template needs jinja2 ({e}): pip install jinja2") from None

    def raise_exception(msg: str):
        raise EngineError(f"chat template: {msg}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    msgs = [dict(m, content=message_text(m.get("content"))) for m in messages]
    extra = {"tools": tools} if tools else {}
    try:
        return env.from_string(template).render(messages=msgs, add_generation_prompt=add_generation_prompt,
                                                bos_token=bos_token, eos_token=eos_token, **extra)
    except TemplateError as e:
        raise EngineError(f"chat template failed: {e}") from None
    except RecursionError:              # a template nested deeper than Jinja's recursive parser goes
        raise EngineError("chat template failed: nested too deeply to parse") from None


class TextStream:
    """Incremental detokenization for streaming: ``push(token)`` returns the text that is safe to show now,
    holding back an incomplete UTF-8 character and any tail that may begin a stop string; a stop string ends the
    stream (``stopped``) and is cut from ``text``."""

    def __init__(self, decode: Callable[[list[int]], str | None], stops: Sequence[str] = ()):
        self.decode, self.stops = decode, [s for s in stops if s]
        self.ids: list[int] = []
        self.sent = 0
        self.stopped = False
        self.text = ""

    def push(self, tok: int | None, final: bool = False) -> str:
        if tok is not None:
            self.ids.append(tok)
        t = self.decode(self.ids) or ""
        cut = min((i for i in (t.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            t, self.stopped, final = t[:cut], True, True
        self.text = t
        safe = len(t)
        if not final:
            if t.endswith("\ufffd"):                  # an incomplete UTF-8 sequence: wait for its next byte
                safe = len(t.rstrip("\ufffd"))
            hold = max((len(s) - 1 for s in self.stops), default=0)
            for k in range(min(hold, safe), 0, -1):  # a tail that may start a stop string
                if any(s.startswith(t[safe - k:safe]) for s in self.stops):
                    safe -= k
                    break
        out = t[self.sent:safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        return out
