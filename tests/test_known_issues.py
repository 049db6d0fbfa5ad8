import pytest

from parity.known_issues import KNOWN_ISSUES, KnownIssue, explain, listed, release

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
