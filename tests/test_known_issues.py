import math

import pytest

from parity import judge
from parity.known_issues import (KNOWN_ISSUES, KnownIssue, applicable, confirmable, explain, listed, matches,
                                  release)
from parity.records import Divergence

QWEN3 = {"attention_bias": True}


def issue(verified) -> KnownIssue:
    return KnownIssue("vllm", verified, "qwen3", ("attn_out",), lambda c: True, "o_proj has no bias")


def test_known_issue_needs_engine_version_arch_kind_and_trigger():
    assert explain([("vllm", "0.32.0")], "qwen3", QWEN3, "attn_out").startswith("vllm 0.32.0: ")
    assert explain([("vllm", "0.33.0")], "qwen3", QWEN3, "attn_out") is None  # a new engine is held to pass
    assert explain([("sglang", "0.5.23")], "qwen3", QWEN3, "attn_out") is None
    assert explain([("vllm", "0.32.0")], "qwen3", QWEN3, "q_rot") is None  # another symptom is not this bug
    assert explain([("vllm", "0.32.0")], "qwen3", {"attention_bias": False}, "attn_out") is None


def test_a_version_inside_the_verified_range_matches_one_outside_does_not():
    bug = issue(("0.29.0", "0.30.0", "0.31.0", "0.32.0"))
    assert bug.versions == "0.29.0-0.32.0"
    assert [v for v in ("0.28.0", "0.29.0", "0.30.0", "0.30.1", "0.31", "0.32.0", "0.32.0+cpu",
                        "0.32.1", "0.33.0", "1.0.0") if bug.covers(v)] == \
        ["0.29.0", "0.30.0", "0.30.1", "0.31", "0.32.0", "0.32.0+cpu"]
    # by number, not by text: "0.9" sorts after "0.30" as a string
    assert issue(("0.9.0", "0.10.0")).covers("0.9.2") and not issue(("0.9.0", "0.10.0")).covers("0.30.0")
    # a pre-, dev or post-release, or no version at all, was never run: held to pass
    assert not any(bug.covers(v) for v in ("0.31.0rc1", "0.31.1.dev3+g1234", "0.30.0.post1", "", "unknown"))


def test_the_tables_ranges_drive_listed_and_explain():
    qwen3 = [i for i in KNOWN_ISSUES if (i.engine, i.arch, i.kinds) == ("vllm", "qwen3", ("attn_out",))]
    assert len(qwen3) == 1
    first, last = qwen3[0].verified[0], qwen3[0].verified[-1]
    for version in qwen3[0].verified:
        assert qwen3[0] in listed("vllm", version, "qwen3")
        assert explain([("vllm", version)], "qwen3", QWEN3, "attn_out").startswith(f"vllm {version}: ")
        assert explain([("vllm", version)], "qwen3", QWEN3, "attn_out").endswith(f"(verified on vllm {qwen3[0].versions})")
    newer = ".".join(map(str, release(last)[:-1] + (release(last)[-1] + 1,)))
    assert listed("vllm", newer, "qwen3") == []
    assert explain([("vllm", newer)], "qwen3", QWEN3, "attn_out") is None
    assert explain([("vllm", first)], "qwen3", QWEN3, "attn_out") is not None


@pytest.mark.parametrize("verified", [
    (), "0.32.0", ("0.32.0", "0.31.0"), ("0.31.0", "0.31.0"), ("0.31", "0.31.0"), ("0.31.0", "latest"),
    ("0.31.0rc1",), ("v0.31.0",),
])
def test_malformed_ranges_are_rejected(verified):
    with pytest.raises(ValueError, match="verified"):
        issue(verified)


def test_a_pair_is_explained_by_either_side():
    assert explain([("vllm", "0.32.0"), ("sglang", "0.5.23")], "gemma", {}, "mlp_out").startswith("sglang")


def test_an_error_is_explained_only_with_its_message():
    longrope = {"rope_parameters": {"rope_type": "longrope", "partial_rotary_factor": 0.5}}
    crash = "RuntimeError: size mismatch\n  File rope_variant.py, in _compute_inv_freq"
    assert explain([("sglang", "0.5.23")], "phi3", longrope, "error", crash).startswith("sglang 0.5.23: ")
    assert explain([("sglang", "0.5.23")], "phi3", longrope, "error", "worker timed out") is None
    full = {"rope_parameters": {"rope_type": "longrope", "partial_rotary_factor": 1.0}}
    assert explain([("sglang", "0.5.23")], "phi3", full, "error", crash) is None


def test_an_error_is_matched_by_the_engines_words_never_by_paritys_own_source_lines():
    """A refusal's message in one of parity's ``raise`` statements, shown in the traceback of another error
    raised there, is parity's source, not the engine's report."""
    deepseek = {"kv_lora_rank": 32}
    frame = ('  File "/root/.cache/parity/workerpath/77/parity/adapters/vllm.py", line 9, in _engine\n'
             '    raise RuntimeError(f"vLLM turned {modes} off for this model (asked for, not run)" if modes else\n')
    other = "RuntimeError: vLLM set KV blocks of 64 tokens for this model, not 32 (not run)\n" + frame
    assert explain([("vllm", "0.32.0")], "deepseek_v3", deepseek, "error", other) is None
    refusal = "RuntimeError: vLLM turned chunked_prefill off for this model (asked for, not run)\n" + frame
    assert explain([("vllm", "0.32.0")], "deepseek_v3", deepseek, "error", refusal)
    engine_frame = ('  File "/root/.cache/parity/envs/sglang-cpu-1/lib/python3.11/site-packages/sglang/rope.py", line 3, '
                    'in _compute_inv_freq\n    inv_freq = ...\n')
    longrope = {"rope_parameters": {"rope_type": "longrope", "partial_rotary_factor": 0.5}}
    assert explain([("sglang", "0.5.23")], "phi3", longrope, "error", "RuntimeError: size mismatch\n" + engine_frame)


def test_a_pair_inherits_a_sides_known_divergence_that_starts_no_later():
    """The bf16 nightly's Qwen3-MoE: vLLM's known o_proj bias bug at step 0's attn_out, inside the pair band there,
    made vLLM and SGLang part at step 1's router_logits."""
    from parity.records import BackendResult

    def diverged(backend, tensor, step, known=None):
        kind = tensor.rpartition(".")[2]
        d = Divergence(tensor=tensor, kind=kind, layer=0, step=step, prompt=0, band=0.08, reason="exceeds noise floor",
                       rel_l2=0.09, max_abs=0.1, cosine=1.0, worst_token=0, worst_index=[0, 0], candidate_value=1.0,
                       reference_value=1.0, non_finite=False)
        return BackendResult(backend=backend, status="diverged", first_divergence=d, known_issue=known,
                             diagnosis=known and "confirmed")

    vllm = diverged("vllm", "layers.0.attn_out", 0, known="vllm 0.32.0: o_proj has no bias")
    sglang = BackendResult(backend="sglang", status="pass")
    pair = diverged("vllm~sglang", "layers.0.router_logits", 1)
    explained = judge.inherit(pair, [vllm, sglang])
    assert (explained.known_issue, explained.diagnosis) == ("vllm 0.32.0: o_proj has no bias", "confirmed")
    assert "explained by vllm's own known divergence" in explained.notes[-1]
    earlier = diverged("vllm~sglang", "layers.0.q_rot", 0)  # before the side's known bug acts: not explained
    assert judge.inherit(earlier, [vllm, sglang]).known_issue is None
    assert judge.inherit(pair, [vllm.model_copy(update={"known_issue": None}), sglang]).known_issue is None


def test_a_bug_of_long_sequences_explains_only_divergences_that_start_where_it_acts():
    """vLLM's YaRN table holds original x factor = 16 positions here: a YaRN bug at earlier positions
    (a PR that drops mscale) is not that known issue, and an example that never reaches 16 is untouched."""
    yarn = {"max_position_embeddings": 256,
            "rope_parameters": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8}}
    vllm = [("vllm", "0.32.0")]
    assert "cos/sin" in explain(vllm, "mixtral", yarn, "q_rot", position=16)
    assert explain(vllm, "mixtral", yarn, "q_rot", position=3) is None
    assert explain(vllm, "mixtral", yarn, "q_rot") is None  # where it starts is not known
    table = [m for m in applicable("vllm", "0.32.0", "mixtral", yarn, last_position=20) if "cos/sin" in m.text]
    assert table and not [m for m in applicable("vllm", "0.32.0", "mixtral", yarn, last_position=15)
                          if "cos/sin" in m.text]


def test_a_divergence_starts_at_its_first_token_past_the_band_or_at_the_token_a_decode_step_fed():
    def divergence(step, per_token=()):
        return Divergence(tensor="layers.0.q_rot", kind="q_rot", layer=0, step=step, prompt=1, band=1e-6,
                          reason="", per_token=list(per_token), rel_l2=1.0, max_abs=1.0, cosine=0.0, worst_token=0,
                          worst_index=[0], candidate_value=0.0, reference_value=0.0, non_finite=False)
    assert judge.divergence_position(divergence(0, [1e-7] * 16 + [1e20, 1.0]), [3, 18]) == 16
    assert judge.divergence_position(divergence(2), [3, 18]) == 19
    assert judge.divergence_position(None, [3]) is None


def gemma3(pattern, **full):
    return {"num_hidden_layers": 2, "sliding_window_pattern": pattern, "max_position_embeddings": 256,
            "rope_parameters": {"sliding_attention": {"rope_type": "yarn", "factor": 2.0, "attention_factor": 0.8,
                                                      "original_max_position_embeddings": 8, "rope_theta": 1e4},
                                "full_attention": {"rope_type": "longrope", "original_max_position_embeddings": 64,
                                                   "rope_theta": 1e6, **full}}}


def test_rope_entries_of_a_family_with_rope_per_layer_type_judge_the_layer_types_its_layers_use():
    (entry,) = [i for i in listed("vllm", "0.32.0", "gemma3_text") if "LongRoPE" in i.diagnosis]
    assert entry.applies(gemma3(2, attention_factor=0.5))  # layer 1 is full attention
    assert not entry.applies(gemma3(6, attention_factor=0.5))  # no full-attention layer among 2
    assert not entry.applies(gemma3(2))
    read = entry.reads_as(gemma3(2, attention_factor=0.5, factor=2.0))["rope_parameters"]
    assert "attention_factor" not in read["full_attention"] and "factor" not in read["full_attention"]
    assert read["sliding_attention"] == gemma3(2)["rope_parameters"]["sliding_attention"]  # YaRN's own kept
    (table,) = [i for i in listed("vllm", "0.32.0", "gemma3_text") if "YaRNScaling" in i.diagnosis]
    assert table.applies(gemma3(2)) and table.starts(gemma3(2)) == 16  # the sliding layers' 8 x 2 positions
    assert explain([("vllm", "0.32.0")], "gemma3_text", gemma3(2), "q_rot", position=15) is None


def _deepseek(**rope):
    return {"rope_interleave": True, "rope_parameters": {"rope_theta": 10000.0, **rope}}


def test_deepseek_yarn_is_matched_where_vllm_computes_otherwise_and_read_as_it_computes():
    from parity.known_issues import _as_deepseek_yarn

    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    # Only this entry's matches: vLLM's CPU rotary kernel rotates every DeepSeek q wrong (its own entry).
    diverges = lambda c: [m for m in matches([("vllm", "0.32.0")], "deepseek_v3", c, "q_rot")  # noqa: E731
                          if "deepseek_yarn" in m.issue.diagnosis]
    assert not diverges(_deepseek(**yarn))  # DeepSeek-YaRN is transformers' YaRN there
    assert not diverges(_deepseek(**yarn, mscale=0.5, mscale_all_dim=1.0))  # the ratio, in both
    for misread in ({"attention_factor": 0.8}, {"truncate": False}, {"mscale": 0.5}, {"mscale_all_dim": 1.0},
                    {"rope_type": "llama3"}):
        assert diverges(_deepseek(**{**yarn, **misread})), misread
    linear = _deepseek(rope_type="linear", factor=2.0)
    assert not diverges(linear)  # refused at load instead
    assert explain([("vllm", "0.32.0")], "deepseek_v3", linear, "error", "KeyError: 'original_max_position_embeddings'")
    # Read as the port computes: YaRN, its own scale stated, only the parameters it takes.
    read = _as_deepseek_yarn(_deepseek(**{**yarn, "rope_type": "llama3"}, mscale=0.5, truncate=False, low_freq_factor=1.0))
    assert read["rope_parameters"] == {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                       "original_max_position_embeddings": 16, "mscale": 0.5,
                                       "attention_factor": pytest.approx(0.1 * 0.5 * math.log(4.0) + 1.0)}


def test_vllms_deepseek_rotary_table_outgrown_is_known_by_its_index_error():
    """Session 14's bf16 nightly: YaRN over an original context of 16 x factor 2 and a context of 128, prompts of 42
    tokens: vLLM's table of 32 positions is indexed at 32."""
    crash = "IndexError: index 32 is out of bounds for dimension 0 with size 32"
    yarn = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 16}
    outgrown = {**_deepseek(**yarn), "max_position_embeddings": 128}
    assert "deepseek_scaling_rope.py" in explain([("vllm", "0.32.0")], "deepseek_v3", outgrown, "error", crash)
    released = {**outgrown, "max_position_embeddings": 32}  # max_position_embeddings = original x factor
    assert explain([("vllm", "0.32.0")], "deepseek_v3", released, "error", crash) is None
    assert explain([("vllm", "0.32.0")], "deepseek_v3", outgrown, "error", "IndexError: list index out of range") is None


def test_vllms_mla_rotary_kernel_explains_q_only_with_two_heads_or_more():
    """One head's q is rotated right (measured): a q_rot divergence there is some other bug's (the bug zoo's M5)."""
    kernel = lambda heads, kind: [m for m in matches([("vllm", "0.32.0")], "deepseek_v3",  # noqa: E731
                                                     {**_deepseek(), "num_attention_heads": heads}, kind)
                                  if "CPU rotary kernel" in m.issue.diagnosis]
    assert not kernel(1, "q_rot") and kernel(2, "q_rot")
    assert kernel(1, "k_rot") and kernel(2, "k_rot")


def test_a_misreading_is_put_to_the_test_whatever_tensor_first_shows_it():
    """Session 13's bf16 nightly: both engines' LongRoPE scale (1.069 for a stated 1.0) moved q by 7%, inside bf16's
    7.8% band, and the attention output past it. The entry names q and k; it is offered for attn_out only to be
    confirmed (parity.diagnosis), and an entry with nothing to test is not offered at all."""
    longrope = {"rope_parameters": {"rope_type": "longrope", "attention_factor": 1.0, "rope_theta": 1e4,
                                    "original_max_position_embeddings": 128}}
    scale = lambda found: [m for m in found if "LongRoPE" in m.issue.diagnosis]  # noqa: E731
    for engine in (("vllm", "0.32.0"), ("sglang", "0.5.23")):
        assert not scale(matches([engine], "llama", longrope, "attn_out"))
        (offered,) = scale(confirmable([engine], "llama", longrope, "attn_out"))
        assert not offered.symptom
        assert not scale(confirmable([engine], "llama", longrope, "q_rot")), "its own symptom is matched, not offered"
    assert not confirmable([("vllm", "0.32.0")], "llama", {"rope_parameters": {"rope_type": "default"}}, "attn_out")
    # Tested together, put down to the one whose symptoms start first (a bf16 nightly: SGLang's unscaled Mixtral YaRN
    # showed first at attn_out, the experts' SiLU for ReLU later at mlp_out)
    yarn = {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "mscale_all_dim": 0.5}, "hidden_act": "relu"}
    offered = confirmable([("sglang", "0.5.23")], "mixtral", yarn, "attn_out")
    assert ["only the base" in m.issue.diagnosis for m in offered] == [True, False], [m.issue.kinds for m in offered]
    # what the session hands diagnosis: the entries naming the symptom first, then those offered to be confirmed
    from parity.records import BackendResult
    d = Divergence(tensor="layers.0.attn_out", kind="attn_out", layer=0, step=0, prompt=0, band=0.078,
                   reason="exceeds noise floor", per_token=[0.0, 0.085], rel_l2=0.085, max_abs=0.1, cosine=1.0,
                   worst_token=1, worst_index=[1, 0], candidate_value=1.0, reference_value=1.0, non_finite=False)
    outcome = judge.Outcome(("sglang",), BackendResult(backend="sglang", status="diverged", first_divergence=d))
    found = judge.candidates(outcome, {"sglang": ("sglang", "0.5.23")}, "mixtral", yarn, [2])
    assert [m.symptom for m in found] == [False, False] and "only the base" in found[0].issue.diagnosis
    window = {**yarn, "sliding_window": 1}  # SGLang's Mixtral never reads the window: an entry naming attn_out
    found = judge.candidates(outcome, {"sglang": ("sglang", "0.5.23")}, "mixtral", window, [2])
    assert [m.symptom for m in found][:1] == [True] and not found[-1].symptom
    # vLLM's MLA rotary kernel bug names q and k and predicts no run of the reference: never offered elsewhere
    assert not [m for m in confirmable([("vllm", "0.32.0")], "deepseek_v3", {**_deepseek(), "num_attention_heads": 2},
                                       "attn_out") if not m.issue.testable]
    assert [m for m in matches([("vllm", "0.32.0")], "deepseek_v3", {**_deepseek(), "num_attention_heads": 2},
                               "q_rot") if not m.issue.testable]


def test_a_crashed_workers_reason_names_the_crash_site_that_its_known_issue_names():
    """vLLM's bf16 rotary kernel kills the worker; torch prints the native stack, the engine's frames first and
    some 180 of the interpreter's after them (session 15's bf16 nightly, phi3): the log's tail alone names none."""
    from parity.pool import crash_site

    frames = ['  File "./signal/../sysdeps/unix/sysv/linux/x86_64/libc_sigaction.c", line 0, in 0x00007f3e5ca5a04f',
              '  File "/tmp/vllm/csrc/cpu/cpu_types_x86.hpp", line 151, in vec_op::BF16Vec8::save(void*) const',
              '  File "/tmp/vllm/csrc/cpu/pos_encoding.cpp", line 54, in operator()',
              '  File "/tmp/vllm/csrc/cpu/pos_encoding.cpp", line 76, in rotary_embedding_impl<c10::BFloat16>']
    interpreter = [f'  File "Python/ceval.c", line {i}, in _PyEval_EvalFrameDefault' for i in range(180)]
    log = "\n".join(["INFO engine built", "!!!!!!! Segfault encountered !!!!!!!", *frames, *interpreter])
    tail = log.splitlines()[-12:]
    phi3 = {"head_dim": 32, "num_attention_heads": 1, "hidden_size": 32,
            "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.75}}
    reason = "\n".join(["worker died (signal SIGSEGV)", *crash_site(log), *tail])
    assert [m.issue.arch for m in matches([("vllm", "0.32.0")], "phi3", phi3, "error", reason)] == ["phi3"]
    assert matches([("vllm", "0.32.0")], "phi3", phi3, "error", "\n".join(["worker died (signal SIGSEGV)", *tail])) == []
