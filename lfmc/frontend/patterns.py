"""What a found structure means, decided once for every lifter (torch.fx in torch_lift.py, ONNX in onnx_lift.py):
the lifter finds the nodes of a block in its own graph, these functions check them and say which chunk of a
projection plays which part of the LIV operator."""
from __future__ import annotations

from typing import Any, Callable, NoReturn, Sequence

from ..ir.graph import Gate

Fail = Callable[..., NoReturn]          # fail(message, nodes to point at)


def short_conv_kernel(shape: Sequence[int], groups: int, left_pad: int, unit_steps: bool, fail: Fail,
                      at: list) -> int:
    """The conv length L of a short conv's kernel ``[D, 1, L]``, after checking that the convolution is
    depthwise (``groups`` = D) and causal (left padding L - 1, stride and dilation 1)."""
    if len(shape) != 3 or shape[1] != 1:
        fail("the conv kernel is not a depthwise [channels, 1, L] tensor", at)
    D, _, L = (int(s) for s in shape)
    if groups != D:
        fail(f"the convolution is not depthwise (groups {groups}, channels {D})", at)
    if left_pad != L - 1 or not unit_steps:
        fail(f"the convolution is not causal (padding {left_pad}, kernel {L})", at)
    return L


def short_conv_gates(pre: list, post: list, operands: Callable[[Any], Sequence[Any]],
                     chunk_of: Callable[[Any], int | None], fail: Fail) -> dict[str, Gate]:
    """The featurizer of a short conv, ``y = C * conv(B * x)`` with B, C, x the three chunks of in_proj:
    ``pre`` are the multiplications that feed the conv, ``post`` the others; ``chunk_of`` says which chunk
    (0..2) an operand is, or None."""
    if len(pre) != 1 or len(post) != 1 or any(chunk_of(a) is None for a in operands(pre[0])):
        fail("expected conv(B * x) with B and x chunks of in_proj", pre or post)
    b, x = (chunk_of(a) for a in operands(pre[0]))
    c = [chunk_of(a) for a in operands(post[0]) if chunk_of(a) is not None]
    if len(c) != 1:
        fail("expected C * conv(..) with C a chunk of in_proj", post)
    return {"B": Gate("in_proj", b, 3), "C": Gate("in_proj", c[0], 3), "x": Gate("in_proj", x, 3)}


def with_optional(params: dict[str, Any], optional: dict[str, Any]) -> dict[str, Any]:
    """``params`` plus each optional parameter (a bias) that the block has."""
    return {**params, **{k: v for k, v in optional.items() if v is not None}}
