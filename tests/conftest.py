"""Shared fixtures."""
from __future__ import annotations

import os

import pytest

from tests.configs import ALL_CONFIGS, INIT_STD

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
