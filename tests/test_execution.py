"""Execution modes on the real engines: tensor parallelism, chunked prefill and the prefix cache give the plain
run's activations, on vLLM and SGLang."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from parity.strategies import KV_BLOCKS, SHARED_PREFIX, sample
from parity.worker.contract import Execution

pytestmark = pytest.mark.parity
FAULTS = Path(__file__).resolve().parent.parent / "fixtures" / "faults"

PREFIX = tuple(range(7, 7 + SHARED_PREFIX))
PLAIN = replace(sample("llama", 1, seed=0)[0], prompts=(PREFIX + (3, 4, 5, 6, 7), PREFIX + (8, 9, 10), PREFIX + (1, 2)))
"""The plainest llama the strategies draw, with prompts that share a one-block prefix (and outgrow one block of
``KV_BLOCKS``), longest first (so they may join a running batch)."""


def same(plain, ran):
    assert plain.keys() == ran.keys()
    for key, tensor in plain.items():
        # Chunks and ranks change the order of arithmetic, not the result beyond fp32 rounding.
        assert np.linalg.norm(ran[key] - tensor) <= 1e-5 * np.linalg.norm(tensor), key


def activations(session, example, engine="vllm"):
    (result,) = session.evaluate(example).results
    assert result.status == "pass" and result.max_rel_l2 < 1e-5, (example.describe(), result.reason)
    return load_file(session.cfg.out / "activations" / example.id / f"{engine}.safetensors")


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
@pytest.mark.parametrize("execution", [Execution(prefill_chunk=4), Execution(prefix_cache=True),
                                       Execution(prefill_chunk=8, prefix_cache=True), Execution(kv_block=KV_BLOCKS[0]),
                                       Execution(prefix_cache=True, kv_block=KV_BLOCKS[0]),
                                       Execution(join_running=True), Execution(join_running=True, prefill_chunk=4),
                                       Execution(join_running=True, prefix_cache=True)], ids=Execution.describe)
def test_the_plain_runs_activations_under(parity_sessions, execution, engine):
    session = parity_sessions([engine])
    same(activations(session, PLAIN, engine), activations(session, replace(PLAIN, execution=execution), engine))


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_more_prompts_than_a_chunk_has_tokens(parity_sessions, engine):
    # vLLM refuses a token budget below its max_num_seqs: the budget is the chunk, so a batch of 8 (the ci
    # profile draws up to 8 prompts) under chunks of 4 must not ask for 8 running sequences.
    session = parity_sessions([engine])
    many = replace(PLAIN, prompts=tuple(tuple(range(i, i + n)) for i, n in enumerate(range(2, 10))))
    same(activations(session, many, engine), activations(session, replace(many, execution=Execution(prefill_chunk=4)),
                                                         engine))


COHERE2 = sample("cohere2", 1, seed=0)[0]
"""Both engines' Cohere ports reduce a parallel block's attention and MLP outputs once, summed: each rank holds
partial sums of both (ranks.gather). Its windows are widened past the prompts: the engines' windows are a known
issue."""


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
@pytest.mark.parametrize("plain,heads,kv_heads,config", [
    (PLAIN, 4, 2, {}), (PLAIN, 2, 1, {}), (COHERE2, 4, 2, {"sliding_window": 16}),
], ids=["kv-heads-sharded", "kv-heads-replicated", "parallel-block-partial-sums"])
def test_two_ranks_give_the_one_rank_activations(parity_sessions, plain, heads, kv_heads, config, engine):
    session = parity_sessions([engine])
    one = replace(plain, prompts=((5, 1, 4), (9, 2, 6, 5, 3)),
                  config={**plain.config, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
                          "hidden_size": 32 * heads, "num_hidden_layers": 2, **config})
    same(activations(session, one, engine),
         activations(session, replace(one, execution=Execution(tensor_parallel=2)), engine))


JOINING = replace(PLAIN, prompts=((9, 2, 6, 5, 3), (5, 1, 4)), config={**PLAIN.config, "num_attention_heads": 2,
                                                                      "num_key_value_heads": 2, "hidden_size": 64})
"""Two prompts, longest first, with heads to split over two ranks."""


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_two_ranks_with_prompts_joining_a_running_batch(parity_sessions, engine):
    """Each rank serves the joining prompts, mixed forwards included, and the ranks' shards gather as ever."""
    session = parity_sessions([engine])
    same(activations(session, JOINING, engine),
         activations(session, replace(JOINING, execution=Execution(tensor_parallel=2, join_running=True)), engine))


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
@pytest.mark.parametrize("ranks", [1, 2])
def test_prompts_asked_to_join_that_never_did_are_an_error(parity_sessions, engine, ranks):
    """An adapter serving a joining request as a plain batch (a fault patch) is caught by the capture, each rank's
    at two ranks: the run is an error, never compared as if the mode had acted."""
    session = parity_sessions([f"{engine}@unjoined"], [f"unjoined={FAULTS / 'join_not_served.py'}"])
    (result,) = session.evaluate(replace(JOINING, execution=Execution(tensor_parallel=ranks, join_running=True))).results
    assert result.status == "error" and "did not join a running batch" in result.reason, result.reason


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_a_prefix_cache_that_is_not_hit_is_an_error_not_a_silent_plain_run(parity_sessions, engine):
    session = parity_sessions([engine])
    unshared = replace(PLAIN, prompts=tuple((i,) + p[1:] for i, p in enumerate(PLAIN.prompts)),
                       execution=Execution(prefix_cache=True))
    (result,) = session.evaluate(unshared).results
    assert result.status == "error" and "cache was not hit" in result.reason, result.reason


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_a_refusal_at_two_ranks_names_the_engines_reason_and_leaves_the_worker_serving(parity_sessions, engine):
    """The engine's own reason reaches the report whichever process refused: vLLM's ranks keep their errors to
    themselves, and its adapter names the one-rank load's; SGLang's ranks send theirs. A known refusal here
    (both engines' Llama take SiLU only), and the half-built two-rank engine does not take the next model's
    parallel groups down with it."""
    session = parity_sessions([engine])
    relu = replace(PLAIN, config={**PLAIN.config, "num_attention_heads": 2, "hidden_size": 64, "hidden_act": "relu"},
                   prompts=((5, 1, 4),), execution=Execution(tensor_parallel=2))
    (refused,) = session.evaluate(relu).results
    assert refused.status == "error" and "Unsupported activation: relu" in refused.reason, refused.reason
    assert refused.known_issue, refused.reason
    (after,) = session.evaluate(replace(PLAIN, weight_seed=PLAIN.weight_seed + 1)).results
    assert after.status == "pass", after.reason
