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

    def token_bytes(self, tok: int) -> bytes:
        """The bytes of one token."""
        return bytes([tok]) if 0 <= tok < 256 else b""


class JsonTokenizer:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self._bytes: tuple | None = None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)

    def token_id(self, token: str) -> int | None:
        """The id of a (special) token, or None when the vocabulary lacks it."""
        return self._tok.token_to_id(token)

    def token_bytes(self, tok: int) -> bytes:
        """The bytes of one token (a byte-level BPE token maps its characters back through GPT-2's byte
        alphabet; a SentencePiece ``<0xNN>`` piece is that byte; a special token is its text)."""
        if self._bytes is None:
            import json

            from tokenizers import pre_tokenizers

            spec = json.loads(self._tok.to_str())
            byte_level = "ByteLevel" in json.dumps(spec.get("decoder"))
            inv = {c: _gpt2_byte(c) for c in pre_tokenizers.ByteLevel.alphabet()} if byte_level else {}
            specials = {a["id"] for a in spec.get("added_tokens", [])}
            self._bytes = (byte_level, inv, specials)
        byte_level, inv, specials = self._bytes
        piece = self._tok.id_to_token(tok)
        if piece is None:
            return b""
        if tok in specials:
            return piece.encode("utf-8")
        if byte_level:
            return bytes(inv[c] for c in piece) if all(c in inv for c in piece) else piece.encode("utf-8")
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode("utf-8")

    def to_json(self) -> str:
        """The tokenizer.json text (what the grammar engine reads)."""
        return self._tok.to_str()


def _printable(b: int) -> bool:
    return 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255


_GPT2_MOVED = [b for b in range(256) if not _printable(b)]


def _gpt2_byte(c: str) -> int:
    """The byte a GPT-2 byte-level character stands for: printable Latin-1 bytes stand for themselves, the
    others were moved to 256 and up in byte order."""
    return ord(c) if ord(c) < 256 and _printable(ord(c)) else _GPT2_MOVED[ord(c) - 256]


def load_tokenizer(root: Path, spec: dict) -> BytesTokenizer | JsonTokenizer | None:
    kind = (spec or {}).get("kind")
    if kind == "bytes":
        return BytesTokenizer()
    if kind == "json":
        return JsonTokenizer(root / "tokenizer.json")
    return None
