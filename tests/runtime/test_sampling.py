"""Log-probabilities of the sampler: float32 exponentials summed in float64 stay within 1e-6 of an all-float64
log-softmax, at every scale of logits, and the single-token form equals the full array's entry."""
from __future__ import annotations

import numpy as np
import pytest

from lfmc.runtime.sampling import log_softmax, token_logprob


@pytest.mark.parametrize("V,scale", [(2, 1.0), (320, 0.02), (65536, 5.0), (65536, 80.0)])
def test_log_softmax_matches_float64(V, scale):
    x = (np.random.default_rng(V).standard_normal(V) * scale).astype(np.float32)
    z = x.astype(np.float64)
    ref = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
    got = log_softmax(x)
    assert got.dtype == np.float64 and np.max(np.abs(got - ref)) < 1e-6
    assert abs(np.logaddexp.reduce(got)) < 1e-6                      # a distribution
    for t in (0, V // 2, V - 1):
        assert token_logprob(x, t) == got[t]
