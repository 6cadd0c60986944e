"""Tokenizers for the runtime: a checkpoint's tokenizer.json (the `tokenizers` library) or raw bytes."""
from __future__ import annotations

from pathlib import Path


class BytesTokenizer:
    """Byte-level: token i is byte i (the built-in tiny models have a 256-entry vocabulary)."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def token_id(self, token: str) -> int | None:
        """The id of a special token: a byte vocabulary has none."""
        return None


class JsonTokenizer:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)

    def token_id(self, token: str) -> int | None:
        """The id of a (special) token, or None when the vocabulary lacks it."""
        return self._tok.token_to_id(token)


def load_tokenizer(root: Path, spec: dict) -> BytesTokenizer | JsonTokenizer | None:
    kind = (spec or {}).get("kind")
    if kind == "bytes":
        return BytesTokenizer()
    if kind == "json":
        return JsonTokenizer(root / "tokenizer.json")
    return None
