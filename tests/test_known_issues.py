from parity.known_issues import explain

QWEN3 = {"attention_bias": True}


def test_known_issue_needs_engine_version_arch_kind_and_trigger():
    assert explain([("vllm", "0.32.0")], "qwen3", QWEN3, "attn_out").startswith("vllm 0.32.0: ")
    assert explain([("vllm", "0.33.0")], "qwen3", QWEN3, "attn_out") is None  # a new engine is held to pass
    assert explain([("sglang", "0.5.23")], "qwen3", QWEN3, "attn_out") is None
    assert explain([("vllm", "0.32.0")], "qwen3", QWEN3, "q_rot") is None  # another symptom is not this bug
    assert explain([("vllm", "0.32.0")], "qwen3", {"attention_bias": False}, "attn_out") is None


def test_a_pair_is_explained_by_either_side():
    assert explain([("vllm", "0.32.0"), ("sglang", "0.5.23")], "gemma", {}, "mlp_out").startswith("sglang")


def test_an_error_is_explained_only_with_its_message():
    longrope = {"rope_parameters": {"rope_type": "longrope", "partial_rotary_factor": 0.5}}
    crash = "RuntimeError: size mismatch\n  File rope_variant.py, in _compute_inv_freq"
    assert explain([("sglang", "0.5.23")], "phi3", longrope, "error", crash).startswith("sglang 0.5.23: ")
    assert explain([("sglang", "0.5.23")], "phi3", longrope, "error", "worker timed out") is None
    full = {"rope_parameters": {"rope_type": "longrope", "partial_rotary_factor": 1.0}}
    assert explain([("sglang", "0.5.23")], "phi3", full, "error", crash) is None
