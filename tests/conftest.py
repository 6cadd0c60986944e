"""Shared fixtures."""
from __future__ import annotations

import os

import pytest

from tests.configs import ALL_CONFIGS, INIT_STD

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _hermetic_build_cache(tmp_path_factory):
    """Builds in tests use a build cache of their own (cold at the start of every run), never the user's."""
    old = os.environ.get("LFMC_CACHE")
    os.environ["LFMC_CACHE"] = str(tmp_path_factory.mktemp("build-cache"))
    yield
    if old is None:
        os.environ.pop("LFMC_CACHE", None)
    else:
        os.environ["LFMC_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_models():
    """name -> lfmc Model (config-built graph, seeded random weights, provenance with the config)."""
    from lfmc.frontend.config import graph_from_config
    from lfmc.ir.model import Model
    from lfmc.ir.weights import random_weights

    out = {}
    for i, (name, cfg) in enumerate(ALL_CONFIGS.items()):
        g = graph_from_config(cfg, name)
        out[name] = Model(g, random_weights(g, seed=100 + i, std=INIT_STD), {"source": "test", "config": cfg})
    return out


@pytest.fixture(scope="session")
def served_artifact(tmp_path_factory, tiny_models):
    """dense-a (byte vocabulary: the bytes tokenizer) compiled for the host: 4 sequences, 512 tokens of context."""
    from lfmc.compile import compile_model

    return compile_model(tiny_models["dense-a"], tmp_path_factory.mktemp("served") / "dense-a.host", max_batch=4,
                         max_context=512, prefill_chunk=32)


@pytest.fixture(scope="session")
def lfm3_models():
    """name -> lfmc Model of the LFM3 test configs (tests/configs.py LFM3_CONFIGS), seeded random weights."""
    from lfmc.frontend.config import graph_from_config
    from lfmc.ir.model import Model
    from lfmc.ir.weights import random_weights

    from tests.configs import LFM3_CONFIGS

    out = {}
    for i, (name, cfg) in enumerate(LFM3_CONFIGS.items()):
        g = graph_from_config(cfg, name)
        out[name] = Model(g, random_weights(g, seed=300 + i, std=INIT_STD), {"source": "test", "config": cfg})
    return out
