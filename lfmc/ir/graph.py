"""The lfmc IR graph: a list of nodes in SSA order, one node per operator as a model author thinks of it.

Linear input-varying (LIV) operators y = T(x)·x carry a :class:`LIV` record: the token-mixing class of T, the
featurizer (which projection, and which chunk of it, feeds which gate, through which activation), the channel
mixing, and the per-sequence state the operator carries between calls.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from .types import TensorType

# Token-mixing classes of LIV operators (the STAR / LIV framework).
LIV_CLASSES = ("diagonal", "low_rank", "scaled_toeplitz", "semi_separable")
MIXINGS = ("dense", "grouped", "diagonal")


@dataclass(frozen=True)
class Gate:
    """One featurizer input of an LIV operator: ``act(chunk `chunk` of `chunks` of proj(x))``."""

    proj: str
    chunk: int = 0
    chunks: int = 1
    act: str = "identity"

    def to_attr(self) -> dict[str, Any]:
        return {"proj": self.proj, "chunk": self.chunk, "of": self.chunks, "act": self.act}

    @staticmethod
    def from_attr(d: dict[str, Any]) -> "Gate":
        if set(d) != {"proj", "chunk", "of", "act"}:
            raise ValueError(f"a featurizer gate needs exactly proj, chunk, of, act; got {sorted(d)}")
        return Gate(str(d["proj"]), int(d["chunk"]), int(d["of"]), str(d["act"]))

    def __str__(self) -> str:
        s = self.proj if self.chunks == 1 else f"{self.proj}[{self.chunk}/{self.chunks}]"
        return s if self.act == "identity" else f"{self.act}({s})"


@dataclass
class LIV:
    """What makes a node a linear input-varying operator."""

    cls: str
    mixing: str
    featurizer: dict[str, Gate]


@dataclass(frozen=True)
class Param:
    """A named weight tensor. Several nodes may refer to one name (tied weights)."""

    name: str
    type: TensorType


@dataclass
class Node:
    """One operator: ``%name : type = op(inputs) attrs{..} liv{..} state{..} fused{..} params{..}``."""

    name: str
    op: str
    inputs: list[str]
    type: TensorType
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)
    liv: LIV | None = None
    state: dict[str, TensorType] = field(default_factory=dict)
    # Kernel-boundary decisions made by fusion passes; they never change what the node computes (the
    # interpreter ignores them), only how targets group it into kernels. See lfmc/ir/fusion.py.
    fused: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    """A model: typed inputs, nodes in SSA order, outputs."""

    name: str
    inputs: list[tuple[str, TensorType]]
    nodes: list[Node]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    def params(self) -> dict[str, Param]:
        """Every distinct parameter, in first-use order."""
        out: dict[str, Param] = {}
        for n in self.nodes:
            for p in n.params.values():
                out.setdefault(p.name, p)
        return out

    def num_parameters(self, buffers: bool = False) -> int:
        """Trained parameter count (as transformers counts it); with ``buffers`` also non-trained tensors."""
        from .ops import SCHEMAS

        buf = {p.name for n in self.nodes for r, p in n.params.items()
               if n.op in SCHEMAS and r in SCHEMAS[n.op].buffer_roles}
        return sum(p.type.numel() for p in self.params().values() if buffers or p.name not in buf)

    def users(self) -> dict[str, list[str]]:
        """Value name -> names of the nodes that read it, in order ("<return>" for a graph output)."""
        out: dict[str, list[str]] = {}
        for n in self.nodes:
            for i in n.inputs:
                out.setdefault(i, []).append(n.name)
        for o in self.outputs:
            out.setdefault(o, []).append("<return>")
        return out

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def stateful(self) -> list[Node]:
        return [n for n in self.nodes if n.state]
