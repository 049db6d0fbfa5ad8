from synthetic_reports import example, report, result

from parity.report import coverage, merge


def test_coverage_counts_the_knob_values_exercised():
    a = example("a", result("vllm"))
    b = example("b", result("vllm")).model_copy(update={"config": {
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "hidden_size": 64,
        "rope_parameters": {"rope_type": "linear", "factor": 2.0}, "sliding_window": 4}})
    cov = coverage([a, b])["llama"]
    assert cov["layers"] == {"2": 1, "3": 1}
    assert cov["gqa_group"] == {"2": 1} and cov["head_dim_decoupled"] == {"True": 1}
    assert cov["rope_type"] == {"default": 1, "linear": 1} and cov["sliding_window"] == {"4": 1}
    assert "attention_bias" not in cov  # never set: not claimed as covered


def test_merge_keeps_every_example_once_and_recounts():
    r1 = report(example("a", result("vllm")), example("b", result("vllm", {"layers.0.q_rot": 1.0})))
    r2 = report(example("b", result("vllm", {"layers.0.q_rot": 1.0})), example("c", result("vllm")))
    merged = merge([r1, r2], command="merged")
    assert [ex.id for ex in merged.examples] == ["a", "b", "c"]
    assert merged.summary.examples == 3 and merged.summary.failing == ["b"]
