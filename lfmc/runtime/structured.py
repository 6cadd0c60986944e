"""Constrained decoding: JSON (``response_format``) and tool-call grammars applied as a token mask in the sampler.

The grammar engine is llguidance: it imports neither torch nor transformers (xgrammar pulls both, which the
runtime may not import), it computes each step's mask lazily from an Earley parser over a lexer instead of
compiling an index over the whole vocabulary per schema first (outlines-core's approach: seconds for a large
vocabulary and a complex schema, paid before the first token), it takes JSON schemas and Lark grammars (with the
vocabulary's special tokens, which tool calls need), and it is the engine llama.cpp and vLLM use.

A grammar must also *end*: a random or weak model sampled at temperature 1 can keep a string or a number open
forever, and an answer cut at ``max_tokens`` inside the JSON does not parse. So each constraint knows the budget
left, and when what remains is only enough to close, it steers: it follows the shortest closing path it finds by
a greedy walk over the grammar (closing quotes and brackets first, then separators, then short values).

Masks are batched: :func:`compute_masks` fills the next-token masks of every constrained sequence of a step in
one call to llguidance's parallel executor (its Rust threads, the GIL released), which the batcher runs in a
background thread while the engine's decode step runs, so that grammars cost little wall time per step.
"""
from __future__ import annotations

import json
import threading
from typing import Any, Sequence

import numpy as np

from .errors import EngineError

# bytes that end what is open, best first (a closing quote, bracket or brace; a separator; a digit ends a number
# that needs one); other tokens rank after them, shorter first
_CLOSE_RANK = {ord(c): i for i, c in enumerate('"]}),:0123456789')}
_OTHER = len(_CLOSE_RANK)
CLOSE_MARGIN = 3        # tokens kept in hand: steering starts when the closing path needs remaining - 3


def _llguidance():
    try:
        import llguidance
    except ImportError as e:
        raise EngineError(f"structured output and tool calls need llguidance ({e}): pip install 'lfmc[serve]'") \
            from None
    return llguidance


class GrammarVocab:
    """The engine's vocabulary as llguidance sees it (built once per engine: about a second for 65k tokens), and
    each token's rank as a closing step."""

    def __init__(self, engine: Any):
        llg = _llguidance()
        V = int(engine.vocab_size)
        tok = engine.tokenizer
        eos = engine.eos_token_id
        if tok is None:
            raise EngineError("this artifact has no tokenizer: constrained output needs one")
        if hasattr(tok, "to_json"):                     # a tokenizer.json: llguidance reads it as it is
            self.tokenizer = llg.LLTokenizer(tok.to_json(), n_vocab=V, eos_token=eos)
        else:                                           # the byte vocabulary of the built-in tiny models
            self.tokenizer = llg.LLTokenizer(llg.TokenizerWrapper(_ByteVocab(V, eos)), n_vocab=V)
        self.vocab_size = V
        self.eos = self.tokenizer.eos_token
        rank = np.full(V, _OTHER * 64 + 63, np.int32)
        for i in range(V):
            b = self.tokenizer.decode_bytes([i]) if not self.tokenizer.is_special_token(i) else b""
            if b:
                rank[i] = _CLOSE_RANK.get(b[0], _OTHER) * 64 + min(len(b), 63)
        self.order = np.argsort(rank, kind="stable")     # closing candidates, best first

    def matcher(self, grammar: str) -> Any:
        m = _llguidance().LLMatcher(self.tokenizer, grammar, log_level=0)
        if m.is_error():
            raise EngineError(f"the grammar does not compile: {m.get_error()}")
        return m


class _ByteVocab:
    """llguidance's view of lfmc's byte tokenizer: token i is byte i (ids past 255 are never produced)."""

    def __init__(self, V: int, eos: int | None):
        self.eos_token_id = eos if eos is not None else 0
        self.bos_token_id = None
        self.tokens = [bytes([i]) if i < 256 else b"" for i in range(V)]
        self.special_token_ids: list[int] = []

    def __call__(self, s: str | bytes) -> list[int]:
        return list(s.encode("utf-8") if isinstance(s, str) else s)


def json_grammar(response_format: Any) -> str | None:
    """The llguidance grammar of an OpenAI ``response_format`` (None for plain text). Compact JSON (no free
    whitespace between tokens: a weak model would otherwise emit it forever)."""
    llg = _llguidance()
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or "type" not in response_format:
        raise EngineError("response_format must be an object with a type")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        schema: Any = {"type": "object"}
    elif kind == "json_schema":
        js = response_format.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
            raise EngineError("response_format.json_schema must be an object with a 'schema' object")
        schema = js.get("schema") or {}
    else:
        raise EngineError(f"response_format type {kind!r} is not one of text, json_object, json_schema")
    try:
        g = llg.LLMatcher.grammar_from_json_schema(schema, overrides={"whitespace_flexible": False})
    except (ValueError, TypeError) as e:
        raise EngineError(f"response_format: not a usable JSON schema ({e})") from None
    err = llg.LLMatcher.validate_grammar(g)
    if err and not err.startswith("WARNING"):
        raise EngineError(f"response_format: the JSON schema is not supported: {err}")
    return g


def lark_grammar(lark: str) -> str:
    """An llguidance grammar from Lark text (tool calls: :mod:`lfmc.runtime.tools`)."""
    return _llguidance().LLMatcher.grammar_from_lark(lark)


class Constraint:
    """One sequence's grammar state: the mask of its next token, the steer to a close when the budget runs low,
    and the tokens it consumes. ``remaining``: tokens the request may still generate."""

    def __init__(self, vocab: GrammarVocab, grammar: str):
        self.vocab = vocab
        self.m = vocab.matcher(grammar)
        self._closing = False
        self._zone = 64             # measure the closing path once the budget falls to this
        self._mask: np.ndarray | None = None      # the next token's mask when computed ahead (compute_masks)

    def allowed(self) -> np.ndarray:
        """Boolean mask [vocab] of the tokens the grammar allows next (computed ahead by :func:`compute_masks`
        when the batcher did, else now)."""
        if self._mask is not None:
            return self._mask
        return _unpack(np.frombuffer(self.m.compute_bitmask(), np.uint8), self.vocab.vocab_size)

    def apply(self, logits: np.ndarray, remaining: int) -> np.ndarray:
        """``logits`` with disallowed tokens at -inf; when ``remaining`` tokens are only enough to close, every
        token but the next step of the closing path too."""
        allowed = self.allowed()
        if not self._closing and remaining <= self._zone:
            # near the end of the budget: measure the closing path every step (one free token can lengthen it)
            n = self.closing_length(limit=remaining)
            if n is None or n >= remaining - CLOSE_MARGIN:
                self._closing = True
            else:
                self._zone = 3 * n + 16
        if self._closing:
            t = self._close_step(self.m, allowed)
            allowed = np.zeros_like(allowed)
            allowed[t] = True
        out = np.where(allowed, logits, -np.inf).astype(np.float32)
        if not allowed.any():
            raise EngineError("the grammar allows no next token")
        return out

    def consume(self, tok: int) -> None:
        self._mask = None
        if not self.m.consume_token(int(tok)):
            raise EngineError(f"token {tok} breaks the grammar: {self.m.get_error()}")

    @property
    def finished(self) -> bool:
        """Nothing more can follow (the end of the grammar)."""
        return self.m.is_stopped()

    def _close_step(self, m: Any, allowed: np.ndarray) -> int:
        """The next token of the greedy closing path from ``m``: EOS when the text may end here, else the allowed
        candidate that makes it complete, else the best-ranked allowed token."""
        eos = self.vocab.eos
        if m.is_accepting() and eos is not None and allowed[eos]:
            return int(eos)
        cands = [int(t) for t in self.vocab.order[allowed[self.vocab.order]][:8]]
        for t in cands:
            c = m.deep_copy()
            if c.consume_token(t) and c.is_accepting():
                return t
        return cands[0]

    def closing_length(self, limit: int) -> int | None:
        """Tokens on the greedy closing path from here (EOS not counted), or None past ``limit``."""
        c = self.m.deep_copy()
        for n in range(limit + 1):
            if c.is_accepting():
                return n
            allowed = _unpack(np.frombuffer(c.compute_bitmask(), np.uint8), self.vocab.vocab_size)
            if not allowed.any():
                return None
            if not c.consume_token(self._close_step(c, allowed)):
                return None
        return None


def _unpack(words: np.ndarray, V: int) -> np.ndarray:
    """llguidance's bitmask (bit i of the little-endian words = token i allowed) as a boolean [V]."""
    return np.unpackbits(words.view(np.uint8), bitorder="little")[:V].astype(bool)


_executor: Any = None
_executor_lock = threading.Lock()


def compute_masks(constraints: Sequence[Constraint]) -> None:
    """Compute the next-token masks of ``constraints`` in one batched call (llguidance's ``LLExecutor``, in
    parallel across its threads); each constraint's next :meth:`Constraint.allowed` returns its row. Equal to
    computing each alone. Safe to run in a background thread while the engine decodes (the matchers are not
    touched by anything else until the step's sampling, which waits for this)."""
    global _executor
    groups: dict[int, list[Constraint]] = {}
    for c in constraints:
        if c._mask is None and not c.m.is_stopped():
            groups.setdefault(id(c.vocab), []).append(c)
    if not groups:
        return
    with _executor_lock:
        if _executor is None:
            _executor = _llguidance().LLExecutor()
    for todo in groups.values():                      # one call per vocabulary (a server has one)
        V = todo[0].vocab.vocab_size
        words = (V + 31) // 32
        bits = np.full((len(todo), words), -1, np.int32)
        _executor.unsafe_compute_mask_ptr([(c.m, i) for i, c in enumerate(todo)], bits.ctypes.data, words * 4,
                                          len(todo))
        for i, c in enumerate(todo):
            c._mask = _unpack(bits[i], V)
