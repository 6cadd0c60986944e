"""Prefix cache: sequences' states stored by the tokens that produced them, so that a request whose prompt starts
with a cached prefix restores that state exactly and prefills only the rest (a chat's system prompt and history).

An LFM's state at a position is small and fixed (conv windows, recurrences) plus the KV cache rows of a few
attention layers. The cache is a tree of token blocks (``block`` tokens each, a shorter leaf at the end of a
request): each node holds its block's KV rows once (shared by every longer prefix below it) and, where the
sequence was seen exactly at the node's end, the fixed-size states there, which make the node a resume point.
Snapshots are taken at every block boundary while a prompt is prefilled and at the end of every request (prompt
and answer, i.e. a chat turn), so a request resumes from the last resume point at or before the position where
it leaves the cached prefixes. A byte budget bounds the cache; the least recently used leaves go first.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .engine import Engine, Snapshot
from .errors import EngineError

BLOCK = 64


@dataclass(eq=False)
class _Node:
    tokens: tuple[int, ...]                 # this node's tokens: a whole block, or fewer at a leaf
    start: int                              # the position of its first token
    kv: dict[str, np.ndarray]               # context-long tensors' rows [start, start + len(tokens))
    small: dict[str, np.ndarray] | None     # fixed-size states after its last token (None: not a resume point)
    parent: "_Node | None"
    children: dict[tuple[int, ...], "_Node"] = field(default_factory=dict)
    used: int = 0

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.kv.values()) + sum(int(a.nbytes) for a in (self.small or {}).values()) \
            + 8 * len(self.tokens) + 200


class PrefixCache:
    """Cached sequence states of one engine's artifact, within ``budget`` bytes (host memory)."""

    def __init__(self, engine: Engine, budget: int, block: int = BLOCK):
        if budget < 0 or block < 1:
            raise EngineError("a prefix cache needs a budget >= 0 bytes and a block >= 1 token")
        self.engine, self.budget, self.block = engine, int(budget), int(block)
        self.grows = {k for k, g in engine.held_state() if g}
        self.root = _Node((), 0, {}, None, None)
        self.nbytes = 0
        self._clock = itertools.count(1)
        self.stats = {"lookups": 0, "hits": 0, "hit_tokens": 0, "stored": 0, "evicted": 0}

    # ------------------------------------------------------------------------------------------ lookup
    def _walk(self, tokens: Sequence[int], limit: int) -> tuple[list[_Node], _Node | None]:
        """The path of whole blocks matching ``tokens`` (ending by ``limit``), and the longest matching leaf under
        its end."""
        path, node, B = [], self.root, self.block
        while node.end + B <= limit:
            child = node.children.get(tuple(tokens[node.end:node.end + B]))
            if child is None:
                break
            path.append(child)
            node = child
        leaf = None
        for key, child in node.children.items():
            n = len(key)
            if n < B and node.end + n <= limit and tuple(tokens[node.end:node.end + n]) == key \
                    and child.small is not None and (leaf is None or n > len(leaf.tokens)):
                leaf = child
        return path, leaf

    def lookup(self, tokens: Sequence[int], limit: int | None = None) -> Snapshot | None:
        """The state after the longest cached prefix of ``tokens`` that is a resume point, at most ``limit``
        tokens long (default: all but the last token, whose logits a request needs), or None."""
        limit = len(tokens) - 1 if limit is None else min(int(limit), len(tokens))
        self.stats["lookups"] += 1
        path, leaf = self._walk(tokens, limit)
        if leaf is not None:
            path = path + [leaf]
        while path and path[-1].small is None:
            path.pop()
        if not path:
            return None
        now = next(self._clock)
        for n in path:
            n.used = now
        arrays = {k: np.concatenate([n.kv[k] for n in path]) for k in self.grows}
        arrays.update(path[-1].small)
        self.stats["hits"] += 1
        self.stats["hit_tokens"] += path[-1].end
        return Snapshot(path[-1].end, arrays)

    # ------------------------------------------------------------------------------------------- store
    def store(self, seq: int, tokens: Sequence[int]) -> int:
        """Cache ``seq``'s state, which holds exactly ``tokens``: new block nodes along the way (KV rows only) and
        a resume point at its end. Returns the bytes added (0 when nothing new or the budget is 0)."""
        e = self.engine
        n = len(tokens)
        if self.budget == 0 or n == 0 or e.length(seq) != n:
            return 0
        path, leaf = self._walk(tokens, n)
        at = path[-1].end if path else 0
        last = path[-1] if path else self.root
        if at == n and last.small is not None or leaf is not None and leaf.end == n:
            (leaf or last).used = next(self._clock)
            return 0                                              # already a resume point here
        snap = e.snapshot(seq, since=at)
        small = {k: a for k, a in snap.arrays.items() if k not in self.grows}
        added = 0
        now = next(self._clock)
        if at == n:                                               # a block end seen before without its state
            last.small = small
            added += sum(int(a.nbytes) for a in small.values())
        B = self.block
        pos, node = at, last
        while pos < n:
            end = min(pos + B, n)
            key = tuple(int(t) for t in tokens[pos:end])
            child = _Node(key, pos, {k: snap.arrays[k][pos - at:end - at].copy() for k in self.grows},
                          small if end == n else None, node, used=now)
            node.children[key] = child
            added += child.nbytes
            pos, node = end, child
        for x in path:
            x.used = now
        self.nbytes += added
        self.stats["stored"] += 1
        self._evict()
        return added

    def _evict(self) -> None:
        """Least recently used leaves out until the cache fits its budget."""
        while self.nbytes > self.budget:
            leaves = [n for n in self._nodes() if not n.children]
            if not leaves:
                break
            old = min(leaves, key=lambda n: n.used)
            del old.parent.children[old.tokens]
            self.nbytes -= old.nbytes
            self.stats["evicted"] += 1

    def _nodes(self):
        stack = list(self.root.children.values())
        while stack:
            n = stack.pop()
            yield n
            stack.extend(n.children.values())

    def info(self) -> dict[str, Any]:
        """Bytes held, nodes, cached tokens (one per node position), and the counters."""
        nodes = list(self._nodes())
        return {"bytes": self.nbytes, "budget": self.budget, "nodes": len(nodes),
                "tokens": sum(len(n.tokens) for n in nodes), **self.stats}
