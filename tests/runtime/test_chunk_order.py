"""Which chunk of a split projection feeds which gate is the model's choice (the verifier allows any order). A
model whose projections are split in another order, its weights permuted to match (so it computes the same
function), gives the same greedy tokens as the original in the interpreter and on every driver.

Regression: the wafer driver unpacked the chunks of a gated conv as (B, C, x) and of SwiGLU as (gate, up) by
position, so a permuted model gave wrong tokens there."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lfmc.compile import compile_model
from lfmc.frontend import import_preset
from lfmc.ir import Interpreter
from lfmc.ir.model import Model
from lfmc.ir.text import parse_graph, print_graph
from lfmc.ir.verify import verify
from lfmc.runtime import Engine

from tests.helpers import has_opencl, interpreter_greedy

# new chunk j holds the old chunk PERM[op][j]
PERM = {"short_conv": (2, 0, 1), "linear_recurrence": (3, 1, 0, 2), "moe": (1, 0)}
ROLE = {"short_conv": "in_proj", "linear_recurrence": "in_proj", "moe": "gate_up"}


def permuted(m: Model) -> Model:
    """The same model with every conv / recurrence / MoE projection split in another chunk order."""
    g = parse_graph(print_graph(m.graph))                   # a copy
    w = dict(m.weights)
    for n in g.nodes:
        if n.op not in PERM:
            continue
        p = PERM[n.op]
        new_of_old = {old: new for new, old in enumerate(p)}
        n.liv.featurizer.update({k: dataclasses.replace(v, chunk=new_of_old[v.chunk])
                                 for k, v in n.liv.featurizer.items() if v.proj == ROLE[n.op]})
        for role in (ROLE[n.op], ROLE[n.op] + "_bias"):
            if role in n.params:
                a = w[n.params[role].name]
                ax = a.ndim - 2 if a.ndim >= 2 else 0                 # the output axis (per expert for MoE)
                parts = np.split(a, len(p), axis=ax)
                w[n.params[role].name] = np.concatenate([parts[i] for i in p], axis=ax)
    verify(g)
    return Model(g, w, m.provenance)


@pytest.fixture(scope="module")
def models(tiny_models):
    return {"hybrid": import_preset("lfm2-hybrid-tiny", weights=True, seed=2, std=0.25),
            "moe-b": tiny_models["moe-b"]}


TARGETS = ["host", pytest.param("snapdragon-8gen3", marks=pytest.mark.skipif(not has_opencl(), reason="no OpenCL")),
           "wafer-small"]
PROMPT, STEPS = [3, 17, 200, 45, 9, 1, 77], 12


@pytest.mark.parametrize("name", ["hybrid", "moe-b"])
def test_permuted_chunks_in_the_interpreter(models, name):
    m = models[name]
    pm = permuted(m)
    assert any(n.liv is not None and any(g.chunk != i for i, g in enumerate(n.liv.featurizer.values()))
               for n in pm.graph.nodes if n.op in PERM)        # the permutation really changed the order
    want = interpreter_greedy(Interpreter(m.graph, m.weights), PROMPT, STEPS)
    assert len(set(want)) > 2
    assert interpreter_greedy(Interpreter(pm.graph, pm.weights), PROMPT, STEPS) == want


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["hybrid", "moe-b"])
def test_permuted_chunks_on_every_driver(models, name, target, tmp_path):
    m = models[name]
    want = interpreter_greedy(Interpreter(m.graph, m.weights), PROMPT, STEPS)
    art = compile_model(permuted(m), tmp_path / "p", target, max_batch=2, max_context=64, prefill_chunk=16)
    eng = Engine(art)
    assert eng.generate(PROMPT, STEPS, stop=[]).tokens == want
