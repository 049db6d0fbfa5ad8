"""Real SGLang-CPU workers next to vLLM-CPU: three-way parity, prefill and decode."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import known
from parity import registry
from parity.example import Example
from parity.profiles import get
from parity.search import search

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "patches"
pytestmark = pytest.mark.parity

# From a bf16 nightly (seed 11): SGLang 0.5.23 drops GPT-J's lm_head bias (a known issue), so from decode step 1
# on it feeds other greedy tokens than the reference.
BF16_PARTING = Example(arch="gpt_j", config={
    "model_type": "gptj", "architectures": ["GPTJForCausalLM"], "num_attention_heads": 1, "num_key_value_heads": 1,
    "head_dim": 32, "hidden_size": 32, "num_hidden_layers": 1, "n_inner": 64, "layer_norm_epsilon": 1e-06,
    "vocab_size": 256, "tie_word_embeddings": False, "max_position_embeddings": 256, "activation_function": "gelu_new",
    "pad_token_id": None, "eos_token_id": None, "bos_token_id": None, "rotary_dim": 32},
    weight_seed=0, prompts=((0, 0),), decode_steps=2)


# GLM-4-MoE with every routing mechanism acting: a dense first layer, then sigmoid scores over eight experts in two
# groups of which one is kept (the group choice moves 11 of 12 prompt tokens' experts), the checkpoint's random
# e_score_correction_bias (it moves 6 of 12), renormalised top-3 weights scaled by 2.5, two shared experts.
GLM4_MOE_ROUTING = Example(arch="glm4_moe", config={
    "model_type": "glm4_moe", "architectures": ["Glm4MoeForCausalLM"], "num_attention_heads": 2,
    "num_key_value_heads": 1, "head_dim": 64, "hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 96,
    "rms_norm_eps": 1e-5, "vocab_size": 256, "tie_word_embeddings": False, "max_position_embeddings": 256,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    "attention_bias": True, "use_qk_norm": True, "first_k_dense_replace": 1, "moe_intermediate_size": 32,
    "n_shared_experts": 2, "routed_scaling_factor": 2.5, "norm_topk_prob": True, "n_routed_experts": 8, "n_group": 2,
    "topk_group": 1, "num_experts_per_tok": 3, "hidden_act": "silu", "pad_token_id": None, "eos_token_id": None,
    "bos_token_id": None}, weight_seed=3, prompts=((3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8), (2, 7, 1)), decode_steps=2)


@pytest.mark.parametrize("arch", known.archs_compared(registry.ARCHITECTURES))
def test_three_way_agreement_prefill_and_decode(parity_sessions, arch):
    session = parity_sessions(["vllm", "sglang"])
    minimal, records = known.search_judging(session, arch, get("dev"), seed=2)
    assert minimal is None, [r for r in session.records[minimal].results if r.status != "pass"]
    assert records
    compared = set()
    engines = {w.label: (w.capabilities.engine, w.capabilities.engine_version) for w in session.engines}
    for ex in records:
        by_backend = {r.backend: r for r in ex.results}
        ran = {b for b in ("vllm", "sglang") if by_backend[b].status in ("pass", "diverged")}
        # engines are compared pairwise whenever both produced activations
        assert set(by_backend) == {"vllm", "sglang"} | ({"vllm~sglang"} if len(ran) == 2 else set())
        if by_backend["sglang"].status == "unsupported":
            # a feature SGLang's CPU attention lacks (e.g. soft-capping) or a way of running parity cannot drive
            # it (an execution mode): said, never passed
            assert re.search(r"does not support|cannot run with", by_backend["sglang"].reason)
            del by_backend["sglang"]
        for r in by_backend.values():
            # engine bugs parity found and diagnosed (parity/known_issues.py), and only those
            known.check(r, [engines[b] for b in r.backend.split("~")], arch, ex)
            if r.known_issue:
                continue
            assert r.status == "pass" and r.max_rel_l2 < 1e-5
            steps = {row.step for row in r.rows if row.verdict == "ok"}
            assert steps == set(range(ex.decode_steps + 1)), "prefill and every decode step compared"
            assert {row.prompt for row in r.rows} == set(range(len(ex.prompts)))
            compared.add(r.backend)
    assert compared, f"no {arch} example drawn was compared: every one was a known issue or unsupported"


def test_raw_layer_output_instead_of_residual_snapshot_is_reported(parity_sessions):
    session = parity_sessions(["sglang"], [f"sglang={FIXTURES / 'sglang_raw_residual.py'}"])
    minimal = search(session, "llama", get("dev"), seed=2)
    assert minimal is not None
    (result,) = session.records[minimal].results
    d = result.first_divergence
    assert result.status == "diverged"
    assert (d.tensor, d.kind, d.layer, d.step) == ("layers.0.residual", "residual", 0, 0)
    assert d.rel_l2 > 0.1  # O(1): the pending contribution is not the stream


def test_support_matrix_comes_from_the_engines_and_the_known_issues():
    proc = subprocess.run([sys.executable, "-m", "parity", "archs", "--backend", "vllm", "--backend", "sglang"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()
            if line.split() and line.split()[0] in registry.ARCHITECTURES and len(line.split()) == 4}
    assert set(rows) == set(registry.ARCHITECTURES)
    # Every family runs on both engines, with engine bugs or refusals on some configs (known_issues.py).
    assert rows["llama"] == ["yes", "yes*", "yes*"]
    assert rows["gemma2"] == ["yes", "yes*", "partial*"]  # no soft-capping in SGLang's CPU attention
    assert rows["stablelm"] == ["yes", "yes*", "yes*"]
    assert "gemma2 on sglang: " in proc.stdout and "attn_logit_softcapping" in proc.stdout
    assert "stablelm on vllm: known issue (error): " in proc.stdout
    assert rows["deepseek_v3"] == ["yes", "yes*", "partial"]  # no MLA path in SGLang's CPU attention
    assert "deepseek_v3 on sglang: " in proc.stdout and "latent_attention" in proc.stdout


def test_known_issue_diagnoses_are_tested_on_the_engine(parity_sessions, monkeypatch):
    """SGLang's GPT-J never adds lm_head's bias (a known issue): the reference run without that bias agrees with
    it, so the diagnosis is confirmed. The same divergence under a diagnosis that predicts nothing different
    (the table's entry with its prediction removed) is refuted, and fails."""
    from dataclasses import replace as with_

    from parity import known_issues, strategies

    session = parity_sessions(["sglang"])
    plain = strategies.sample("gpt_j", 1, 0)[0]
    (result,) = session.evaluate(plain).results
    assert result.status == "diverged" and result.first_divergence.kind == "logits"
    assert result.diagnosis == "confirmed" and "lm_head" in result.known_issue

    wrong = [with_(i, ignores=(), reads_as=lambda c: c) if (i.engine, i.arch, i.kinds) == ("sglang", "gpt_j", ("logits",))
             else i for i in known_issues.KNOWN_ISSUES]
    monkeypatch.setattr(known_issues, "KNOWN_ISSUES", tuple(wrong))
    record = session.evaluate(with_(plain, weight_seed=plain.weight_seed + 1))
    (result,) = record.results
    assert result.status == "diverged" and result.known_issue is None and record.failed
    assert any(n.startswith("not a known sglang issue: sglang also diverges") and "at logits" in n
               for n in result.notes), result.notes


def test_bf16_decode_compared_along_sglangs_own_tokens_and_vllm_decided_before_running(parity_sessions):
    """An example whose SGLang greedy tokens part from the fp64 reference's (through a known bug): every decode
    step is still compared, against the reference teacher-forced along SGLang's tokens. vLLM runs bf16 or is
    unsupported with its reason, as its hello said, never an error or a worker restart."""
    session = parity_sessions(["vllm", "sglang"], dtype="bfloat16")
    vllm = session.workers["vllm"]
    pid = vllm.capabilities.pid
    record = session.evaluate(BF16_PARTING)
    by = {r.backend: r for r in record.results}
    sglang = by["sglang"]
    assert sglang.trajectory == "own" and sglang.notes[0].startswith("greedy tokens differ from the reference's")
    assert {row.step for row in sglang.rows if row.verdict != "skipped"} == set(range(BF16_PARTING.decode_steps + 1))
    assert sglang.status == "pass" or sglang.known_issue, sglang.first_divergence
    if "bfloat16" in vllm.capabilities.dtypes:
        assert by["vllm"].status == "pass", by["vllm"].reason
    else:
        reason = vllm.capabilities.unsupported_dtypes["bfloat16"]
        assert by["vllm"].status == "unsupported" and reason in by["vllm"].reason
        assert vllm.capabilities.pid == pid, "the worker was restarted"


def test_glm4_moe_grouped_biased_scaled_routing_agrees_on_both_engines(parity_sessions):
    """Both engines leave routed_scaling_factor out of their top-k weights and scale the experts' output instead;
    the adapters put it back, so that expert_weights mean what transformers' router returns."""
    session = parity_sessions(["vllm", "sglang"])
    results = {r.backend: r for r in session.evaluate(GLM4_MOE_ROUTING).results}
    assert {b: r.status for b, r in results.items()} == {"vllm": "pass", "sglang": "pass", "vllm~sglang": "pass"}
    for r in results.values():
        routed = {row.layer for row in r.rows if row.kind == "expert_weights" and row.verdict == "ok"}
        assert routed == {1}, (r.backend, routed)  # the dense first layer routes nothing
