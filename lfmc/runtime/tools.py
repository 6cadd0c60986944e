"""Tool calling in LFM2's format (``shared/data/lfm2_tool_calls.md``): tools declared in the system turn, calls
answered as Python-style calls in a list between special tokens::

    <|tool_call_start|>[get_weather(location="Paris"), get_time(tz="CET")]<|tool_call_end|>

parsed here (with :mod:`ast`, never ``eval``) into OpenAI ``tool_calls``. ``tool_choice`` "required" or a named
function is enforced with a grammar (:mod:`lfmc.runtime.structured`) that admits only calls of the offered
tools, with each argument of its declared JSON type.
"""
from __future__ import annotations

import ast
import json
import uuid
from typing import Any

from .errors import EngineError

CALL_START, CALL_END = "<|tool_call_start|>", "<|tool_call_end|>"
LIST_START, LIST_END = "<|tool_list_start|>", "<|tool_list_end|>"
TOKENS = (CALL_START, CALL_END, LIST_START, LIST_END)


def check_tools(tools: Any, tool_choice: Any, tokenizer: Any) -> tuple[list[dict[str, Any]], Any]:
    """The request's tools (each ``{"type": "function", "function": {"name", "parameters"?}}``) and its
    tool_choice, validated; refused when the vocabulary lacks LFM2's tool-call tokens."""
    if not isinstance(tools, list) or not tools:
        raise EngineError("tools must be a non-empty list of {type: function, function: {name, parameters}}")
    names = []
    for t in tools:
        f = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"].isidentifier():
            raise EngineError("each tool must be {type: function, function: {name: an identifier, parameters}}")
        if not isinstance(f.get("parameters", {}), dict):
            raise EngineError(f"tool {f['name']}: parameters must be a JSON schema object")
        names.append(f["name"])
    if len(set(names)) != len(names):
        raise EngineError("tool names must be unique")
    token_id = getattr(tokenizer, "token_id", None)
    missing = [t for t in (CALL_START, CALL_END) if token_id is None or token_id(t) is None]
    if missing:
        raise EngineError(f"this model cannot call tools: its vocabulary lacks {', '.join(missing)} (LFM2's "
                          "tool-call tokens)")
    if tool_choice is None:
        tool_choice = "auto"
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") if tool_choice.get("type") == "function" else None
        if name not in names:
            raise EngineError(f"tool_choice names a function that is not among the tools: {name!r}")
    elif tool_choice not in ("auto", "none", "required"):
        raise EngineError("tool_choice must be 'auto', 'none', 'required' or {type: function, function: {name}}")
    return [t["function"] for t in tools], tool_choice


def system_tools_text(functions: list[dict[str, Any]]) -> str:
    """What LFM2's template appends to the system prompt (used when the artifact has no chat template)."""
    return "List of tools: " + LIST_START + json.dumps(functions) + LIST_END


def with_tools(messages: list[dict[str, Any]], functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with the tool list in the system turn (a system turn is added in front if there is none)."""
    text = system_tools_text(functions)
    msgs = [dict(m) for m in messages]
    if msgs and msgs[0].get("role") == "system":
        c = msgs[0].get("content")
        msgs[0]["content"] = (c if isinstance(c, str) else "") + ("\n" if c else "") + text
    else:
        msgs.insert(0, {"role": "system", "content": text})
    return msgs


# ------------------------------------------------------------------------------------------------- grammar
_VALUE = {
    "string": 'STR', "integer": 'INT', "number": 'NUM', "boolean": '("True" | "False")', "null": '"None"',
}
_TERMINALS = r"""
STR: /"([^"\\\x00-\x1f\x7f]|\\["\\nt])*"/
INT: /-?(0|[1-9][0-9]{0,17})/
NUM: /-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,12})?/
"""


def _value(schema: Any) -> str:
    if not isinstance(schema, dict):
        return "%json {}"
    if "enum" in schema and all(isinstance(v, (str, int, float, bool)) or v is None for v in schema["enum"]):
        return "(" + " | ".join(json.dumps(repr(v)) for v in schema["enum"]) + ")"
    t = schema.get("type")
    if isinstance(t, str) and t in _VALUE:
        return _VALUE[t]
    return "%json " + json.dumps(schema)          # arrays, objects: JSON literals (parsed leniently below)


def _call_rule(f: dict[str, Any]) -> str:
    props = (f.get("parameters") or {}).get("properties") or {}
    req = set((f.get("parameters") or {}).get("required") or [])
    kv = {p: f'"{p}=" {_value(s)}' for p, s in props.items()}
    must = [kv[p] for p in props if p in req]
    opt = [kv[p] for p in props if p not in req]
    if must:
        body = ' ", " '.join(must) + "".join(f' (", " {o})?' for o in opt)
    elif opt:
        body = "(" + opt[0] + "".join(f' (", " {o})?' for o in opt[1:]) + ")?"
    else:
        body = ""
    return f'"{f["name"]}(" {body} ")"'


def call_grammar(functions: list[dict[str, Any]], tool_choice: Any) -> str:
    """Lark text admitting one tool-call block of the offered tools (only the named one for a named choice)."""
    if isinstance(tool_choice, dict):
        functions = [f for f in functions if f["name"] == tool_choice["function"]["name"]]
    calls = " | ".join(f"call_{i}" for i in range(len(functions)))
    rules = "\n".join(f"call_{i}: {_call_rule(f)}" for i, f in enumerate(functions))
    return (f'start: <{CALL_START[1:-1]}> "[" call (", " call)* "]" <{CALL_END[1:-1]}>\n'
            f"call: {calls}\n{rules}\n{_TERMINALS}")


# ------------------------------------------------------------------------------------------------- parsing
def _literal(node: ast.AST) -> Any:
    """A Python literal, with JSON's true / false / null accepted too (the grammar's JSON values)."""
    if isinstance(node, ast.Name) and node.id in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[node.id]
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    return ast.literal_eval(node)


def parse_calls(block: str) -> list[dict[str, Any]]:
    """``[f(a=1), g(b="x")]`` -> OpenAI tool calls; raises ValueError on anything that is not such a list."""
    tree = ast.parse(block.strip(), mode="eval").body
    if not isinstance(tree, ast.List):
        raise ValueError("a tool-call block is a list of calls")
    out = []
    for c in tree.elts:
        if not isinstance(c, ast.Call) or not isinstance(c.func, ast.Name) or c.args:
            raise ValueError("each tool call is name(keyword=value, ...)")
        args = {k.arg: _literal(k.value) for k in c.keywords if k.arg is not None}
        out.append({"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                    "function": {"name": c.func.id, "arguments": json.dumps(args)}})
    return out


def calls_text(tool_calls: list[dict[str, Any]]) -> str:
    """OpenAI ``tool_calls`` of an earlier assistant turn in LFM2's call format (for the next prompt)."""
    parts = []
    for c in tool_calls:
        f = (c.get("function") or {}) if isinstance(c, dict) else {}
        try:
            args = json.loads(f.get("arguments") or "{}")
        except (TypeError, ValueError):
            raise EngineError(f"tool call {f.get('name')!r}: arguments are not a JSON object") from None
        if not isinstance(args, dict) or not str(f.get("name", "")).isidentifier():
            raise EngineError("a tool call needs a function name and JSON-object arguments")
        parts.append(f"{f['name']}(" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")")
    return CALL_START + "[" + ", ".join(parts) + "]" + CALL_END


class CallFilter:
    """Separates a reply's tool-call blocks from its text, token by token: ``push(tok)`` returns the tokens to
    show as text (none while a block is open) and the calls of a block that just closed."""

    def __init__(self, start_id: int, end_id: int, decode):
        self.start_id, self.end_id, self.decode = start_id, end_id, decode
        self.block: list[int] | None = None
        self.calls: list[dict[str, Any]] = []

    def push(self, tok: int) -> tuple[list[int], list[dict[str, Any]]]:
        if self.block is None:
            if tok == self.start_id:
                self.block = []
                return [], []
            return [tok], []
        if tok != self.end_id:
            self.block.append(tok)
            return [], []
        block, self.block = self.block, None
        try:
            calls = parse_calls(self.decode(block) or "")
        except (ValueError, SyntaxError):               # not a call list: it stays text
            return [self.start_id, *block, tok], []
        self.calls += calls
        return [], calls

    def flush(self) -> list[int]:
        """The tokens of a block still open at the end (shown as text: it never closed)."""
        block, self.block = self.block, None
        return [] if block is None else [self.start_id, *block]


def split_reply(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) of a reply: the calls of every complete tool-call block, the text around them as
    content (None when empty). A block that does not parse stays in the content."""
    calls: list[dict[str, Any]] = []
    content: list[str] = []
    rest = text
    while CALL_START in rest:
        before, _, after = rest.partition(CALL_START)
        block, end, tail = after.partition(CALL_END)
        if not end:
            break
        try:
            calls += parse_calls(block)
            content.append(before)
        except (ValueError, SyntaxError):
            content.append(before + CALL_START + block + CALL_END)
        rest = tail
    content.append(rest)
    s = "".join(content).strip()
    return (s or None), calls
