"""The textual form of the IR: a deterministic printer and its parser (``print(parse(print(g))) == print(g)``).

    # lfmc IR v1
    graph "lfm2-tiny" {
      input %tokens : i64[T]
      %0 : f32[T, 64] = embedding(%tokens) params {weight = @model.embed_tokens.weight : f32[256, 64]}
      %3 : f32[T, 64] = short_conv(%2) attrs {L_cache = 3} liv {class = "scaled_toeplitz", ...} state {conv = f32[64, 2]} params {...}
      return %9
    }

Attribute values are ints, floats (Python ``repr``), booleans, quoted strings, lists ``[..]``, dicts
``{k = v, ..}`` (printed with sorted keys) and tensor types ``f32[T, 64]``.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import ParseError
from .graph import LIV, Gate, Graph, Node, Param
from .types import DTYPES, TensorType

HEADER = "# lfmc IR v1"


# ----------------------------------------------------------------------------------------------- printer
def format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, TensorType):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {format_value(v[k])}" for k in sorted(v)) + "}"
    if isinstance(v, Gate):
        return format_value(v.to_attr())
    raise TypeError(f"cannot print attribute value {v!r} of type {type(v).__name__}")


def _key(k: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
        raise TypeError(f"attribute key {k!r} is not an identifier")
    return k


def format_node(n: Node) -> str:
    s = f"%{n.name} : {n.type} = {n.op}({', '.join('%' + i for i in n.inputs)})"
    if n.attrs:
        s += " attrs " + format_value(n.attrs)
    if n.liv is not None:
        s += " liv " + format_value({"class": n.liv.cls, "mixing": n.liv.mixing,
                                     "featurizer": {k: g.to_attr() for k, g in n.liv.featurizer.items()}})
    if n.state:
        s += " state " + format_value(n.state)
    if n.fused:
        s += " fused " + format_value(n.fused)
    if n.params:
        s += " params {" + ", ".join(f"{_key(r)} = @{n.params[r].name} : {n.params[r].type}"
                                     for r in sorted(n.params)) + "}"
    return s


def print_graph(g: Graph) -> str:
    lines = [HEADER, f"graph {json.dumps(g.name)} {{"]
    if g.attrs:
        lines.append("  attrs " + format_value(g.attrs))
    for name, t in g.inputs:
        lines.append(f"  input %{name} : {t}")
    lines += ["  " + format_node(n) for n in g.nodes]
    lines.append("  return " + ", ".join("%" + o for o in g.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ parser
_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r]+) | (?P<nl>\n) | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\\n])*")
  | (?P<value>%[A-Za-z0-9_.]+)
  | (?P<param>@[A-Za-z0-9_.\-/:]+)
  | (?P<number>-?(?:\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|inf\b|nan\b))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}\[\](),=:])
""", re.VERBOSE)


class _Tok:
    __slots__ = ("kind", "text", "line", "col")

    def __init__(self, kind: str, text: str, line: int, col: int):
        self.kind, self.text, self.line, self.col = kind, text, line, col

    def __repr__(self) -> str:
        return repr(self.text) if self.kind != "eof" else "end of input"


def _tokenize(src: str, source: str) -> list[_Tok]:
    toks, pos, line, start = [], 0, 1, 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m:
            raise ParseError(f"unexpected character {src[pos]!r}", line, pos - start + 1, source)
        kind = m.lastgroup
        if kind == "nl":
            line, start = line + 1, m.end()
        elif kind not in ("ws", "comment"):
            toks.append(_Tok(kind, m.group(), line, pos - start + 1))
        pos = m.end()
    toks.append(_Tok("eof", "", line, pos - start + 1))
    return toks


class _Parser:
    def __init__(self, src: str, source: str):
        self.toks = _tokenize(src, source)
        self.i = 0
        self.source = source

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def err(self, msg: str, tok: _Tok | None = None) -> ParseError:
        t = tok or self.peek()
        return ParseError(msg, t.line, t.col, self.source)

    def next(self) -> _Tok:
        t = self.toks[self.i]
        if t.kind != "eof":
            self.i += 1
        return t

    def expect(self, text: str) -> _Tok:
        t = self.next()
        if t.text != text or t.kind == "string":
            raise self.err(f"expected {text!r}, found {t!r}", t)
        return t

    def expect_kind(self, kind: str, what: str) -> _Tok:
        t = self.next()
        if t.kind != kind:
            raise self.err(f"expected {what}, found {t!r}", t)
        return t

    # values
    def value(self) -> Any:
        t = self.peek()
        if t.text == "{" and t.kind == "punct":
            return self.dict_value()
        if t.text == "[" and t.kind == "punct":
            self.next()
            out = []
            while not (self.peek().kind == "punct" and self.peek().text == "]"):
                out.append(self.value())
                if self.peek().text == ",":
                    self.next()
                elif self.peek().text != "]":
                    raise self.err(f"expected ',' or ']' in list, found {self.peek()!r}")
            self.next()
            return out
        if t.kind == "string":
            self.next()
            return self.string(t)
        if t.kind == "number":
            self.next()
            txt = t.text
            if any(c in txt for c in ".eEn") or txt.endswith("inf"):
                return float(txt)
            return int(txt)
        if t.kind == "ident":
            if t.text in ("true", "false"):
                self.next()
                return t.text == "true"
            if t.text in DTYPES:
                return self.tensor_type()
        raise self.err(f"expected a value, found {t!r}")

    def dict_value(self) -> dict[str, Any]:
        self.expect("{")
        out: dict[str, Any] = {}
        while not (self.peek().kind == "punct" and self.peek().text == "}"):
            k = self.expect_kind("ident", "a key")
            if k.text in out:
                raise self.err(f"duplicate key {k.text!r}", k)
            self.expect("=")
            out[k.text] = self.value()
            if self.peek().text == ",":
                self.next()
            elif self.peek().text != "}":
                raise self.err(f"expected ',' or '}}' in dict, found {self.peek()!r}")
        self.next()
        return out

    def tensor_type(self) -> TensorType:
        dt = self.expect_kind("ident", "a dtype")
        if dt.text not in DTYPES:
            raise self.err(f"unknown dtype {dt.text!r}", dt)
        self.expect("[")
        dims: list[int | str] = []
        while self.peek().text != "]":
            t = self.next()
            if t.kind == "number" and t.text.isdigit():
                dims.append(int(t.text))
            elif t.kind == "ident":
                dims.append(t.text)
            else:
                raise self.err(f"expected a dimension, found {t!r}", t)
            if self.peek().text == ",":
                self.next()
            elif self.peek().text != "]":
                raise self.err(f"expected ',' or ']' in shape, found {self.peek()!r}")
        self.next()
        return TensorType(dt.text, tuple(dims))

    def name(self, kind: str) -> str:
        return self.expect_kind(kind, "a %value" if kind == "value" else "an @param").text[1:]

    def string(self, t: _Tok) -> str:
        """A string literal (JSON syntax); a malformed one (a raw control character, a bad escape) is a ParseError."""
        try:
            return json.loads(t.text)
        except ValueError as e:
            raise ParseError(f"malformed string literal ({e.msg})", t.line, t.col, self.source) from None

    # graph
    def graph(self) -> Graph:
        self.expect("graph")
        gname = self.string(self.expect_kind("string", "the graph name"))
        self.expect("{")
        g = Graph(gname, [], [], [])
        if self.peek().text == "attrs":
            self.next()
            g.attrs = self.dict_value()
        while self.peek().text == "input":
            self.next()
            n = self.name("value")
            self.expect(":")
            g.inputs.append((n, self.tensor_type()))
        while self.peek().kind == "value":
            g.nodes.append(self.node())
        self.expect("return")
        g.outputs.append(self.name("value"))
        while self.peek().text == ",":
            self.next()
            g.outputs.append(self.name("value"))
        self.expect("}")
        if self.peek().kind != "eof":
            raise self.err(f"unexpected {self.peek()!r} after the end of the graph")
        return g

    def node(self) -> Node:
        start = self.peek()
        name = self.name("value")
        self.expect(":")
        ty = self.tensor_type()
        self.expect("=")
        op = self.expect_kind("ident", "an op name").text
        self.expect("(")
        inputs = []
        while self.peek().text != ")":
            inputs.append(self.name("value"))
            if self.peek().text == ",":
                self.next()
            elif self.peek().text != ")":
                raise self.err(f"expected ',' or ')' in operands, found {self.peek()!r}")
        self.next()
        n = Node(name, op, inputs, ty)
        seen = set()
        while self.peek().kind == "ident" and self.peek().text in ("attrs", "liv", "state", "fused", "params"):
            sec = self.next()
            if sec.text in seen:
                raise self.err(f"section {sec.text!r} given twice", sec)
            seen.add(sec.text)
            if sec.text == "attrs":
                n.attrs = self.dict_value()
            elif sec.text == "state":
                st = self.dict_value()
                for k, v in st.items():
                    if not isinstance(v, TensorType):
                        raise self.err(f"state {k!r} of %{name} must be a tensor type", sec)
                n.state = st
            elif sec.text == "liv":
                n.liv = self.liv(sec, name)
            elif sec.text == "fused":
                n.fused = self.dict_value()
            else:
                self.expect("{")
                while self.peek().text != "}":
                    role = self.expect_kind("ident", "a parameter role").text
                    self.expect("=")
                    pname = self.name("param")
                    self.expect(":")
                    n.params[role] = Param(pname, self.tensor_type())
                    if self.peek().text == ",":
                        self.next()
                    elif self.peek().text != "}":
                        raise self.err(f"expected ',' or '}}' in params, found {self.peek()!r}")
                self.next()
        if self.peek().kind not in ("value",) and self.peek().text != "return":
            raise self.err(f"unexpected {self.peek()!r} after node %{name} (line {start.line})")
        return n

    def liv(self, tok: _Tok, name: str) -> LIV:
        d = self.dict_value()
        if set(d) != {"class", "mixing", "featurizer"} or not isinstance(d["featurizer"], dict):
            raise self.err(f"liv of %{name} needs class, mixing and a featurizer dict", tok)
        try:
            feat = {k: Gate.from_attr(v) for k, v in d["featurizer"].items()}
        except (ValueError, TypeError, AttributeError) as e:
            raise self.err(f"bad featurizer of %{name}: {e}", tok) from None
        return LIV(str(d["class"]), str(d["mixing"]), feat)


def parse_graph(src: str, source: str = "<ir>") -> Graph:
    """Parse IR text; raises :class:`ParseError` naming the line and column of the first problem."""
    if not isinstance(src, str):
        raise ParseError("IR text must be a string", source=source)
    return _Parser(src, source).graph()
