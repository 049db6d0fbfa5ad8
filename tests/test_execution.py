"""Execution modes on the real vLLM: chunked prefill and the prefix cache give the plain run's activations."""

from dataclasses import replace

import numpy as np
import pytest
from safetensors.numpy import load_file

from parity.strategies import SHARED_PREFIX, sample
from parity.worker.contract import Execution

pytestmark = pytest.mark.parity

PREFIX = tuple(range(7, 7 + SHARED_PREFIX))
PLAIN = replace(sample("llama", 1, seed=0)[0], prompts=(PREFIX + (1, 2), PREFIX + (3, 4, 5, 6, 7), PREFIX + (8, 9, 10)))
"""The plainest llama the strategies draw, with prompts that share a one-block prefix."""


def activations(session, example):
    (result,) = session.evaluate(example).results
    assert result.status == "pass" and result.max_rel_l2 < 1e-5, (example.describe(), result.reason)
    return load_file(session.cfg.out / "activations" / example.id / "vllm.safetensors")


@pytest.mark.parametrize("execution", [Execution(prefill_chunk=4), Execution(prefix_cache=True),
                                       Execution(prefill_chunk=8, prefix_cache=True)], ids=Execution.describe)
def test_vllm_gives_the_plain_runs_activations_under(parity_sessions, execution):
    session = parity_sessions(["vllm"])
    plain, ran = activations(session, PLAIN), activations(session, replace(PLAIN, execution=execution))
    assert plain.keys() == ran.keys()
    for key, tensor in plain.items():
        # Chunks change the order of arithmetic, not the result beyond fp32 rounding.
        assert np.linalg.norm(ran[key] - tensor) <= 1e-5 * np.linalg.norm(tensor), key


def test_a_prefix_cache_that_is_not_hit_is_an_error_not_a_silent_plain_run(parity_sessions):
    session = parity_sessions(["vllm"])
    unshared = replace(PLAIN, prompts=tuple((i,) + p[1:] for i, p in enumerate(PLAIN.prompts)),
                       execution=Execution(prefix_cache=True))
    (result,) = session.evaluate(unshared).results
    assert result.status == "error" and "prefix cache was not hit" in result.reason
