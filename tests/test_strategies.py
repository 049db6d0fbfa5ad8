import importlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis.errors import NoSuchExample
from hypothesis import strategies as st

from parity import registry
from parity.example import Example
from parity.strategies import (KV_BLOCKS, SHARED_PREFIX, ExecutionSurface, PromptSurface, examples, executions, sample,
                               supported_head_dims, tensor_parallel_fits)
from parity.worker.contract import ContractError, Execution, RunRequest


@given(st.data())
def test_examples_are_valid_by_construction(data):
    arch = data.draw(st.sampled_from(list(registry.ARCHITECTURES)))
    spec = registry.get(arch)
    dims = supported_head_dims(spec, [[32, 64, 80], None])
    ex = data.draw(examples(arch, spec, dims, decode_steps=2))
    # Written under the family's own key names, counted under parity's.
    assert set(spec.config_keys.values()) <= set(ex.config) and not set(spec.config_keys) & set(ex.config)
    c = registry.canonical_config(arch, ex.config)
    assert c["num_attention_heads"] % registry.kv_heads(c) == 0
    head_dim = c["head_dim"] if spec.states_head_dim else c["hidden_size"] // c["num_attention_heads"]
    assert head_dim in (32, 64) and ("head_dim" in c) == spec.states_head_dim
    assert spec.layers[0] <= c["num_hidden_layers"] <= spec.layers[1]
    rope = c["rope_parameters"]
    rotary = rope.get("partial_rotary_factor", 1.0) * head_dim
    assert rotary == int(rotary) and int(rotary) % 2 == 0
    if rope.get("rope_type") == "longrope":  # one rescale factor per rotated pair
        assert len(rope["short_factor"]) == len(rope["long_factor"]) == int(rotary) // 2
    lengths = [len(p) for p in ex.prompts]
    assert len(set(lengths)) == len(lengths), "the token router needs distinct prompt lengths"
    shared = SHARED_PREFIX if ex.execution.prefix_cache else 0
    assert len({p[shared] for p in ex.prompts}) == len(ex.prompts), "contents must differ after a shared prefix"
    assert len({p[:shared] for p in ex.prompts}) == 1 and (not shared or len(ex.prompts) > 1)
    assert all(0 <= t < c["vocab_size"] for p in ex.prompts for t in p)
    assert ex.id == type(ex).from_json(ex.to_json()).id


def test_gptj_states_the_rotated_width_in_dimensions():
    drawn = {"head_dim": 64, "rms_norm_eps": 1e-5, "intermediate_size": 96,
             "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}}
    written = registry.family_config(registry.get("gpt_j"), drawn)
    assert written == {"head_dim": 64, "layer_norm_epsilon": 1e-5, "n_inner": 96, "rotary_dim": 16}
    assert registry.canonical_config("gpt_j", written)["rope_parameters"]["partial_rotary_factor"] == 0.25


def test_head_sizes_are_intersected_with_every_backend():
    spec = registry.get("llama")
    assert supported_head_dims(spec, [[32, 64, 128], [64, 128, 256]]) == (64, 128)
    assert supported_head_dims(spec, [None]) == spec.head_dims
    assert supported_head_dims(spec, [[16]]) == ()


@given(st.data())
def test_a_knob_set_is_drawn_as_one_of_its_combinations(data):
    spec = registry.get("glm4_moe")
    config = data.draw(examples("glm4_moe", spec, spec.head_dims, decode_steps=2)).config
    (combos,) = spec.knob_sets
    assert {key: config[key] for key in combos[0]} in [dict(c) for c in combos]
    assert set(combos[0]) <= set(spec.family_knobs)  # named in descriptions and coverage


def test_glm4_moe_groups_leave_enough_experts_for_the_top_k():
    for c in registry.get("glm4_moe").knob_sets[0]:
        per_group, remainder = divmod(c["n_routed_experts"], c["n_group"])
        # A group's score sums its best two experts; the kept groups must hold the top-k.
        assert remainder == 0 and per_group >= 2, c
        assert c["topk_group"] <= c["n_group"] and c["num_experts_per_tok"] <= c["topk_group"] * per_group, c


def test_a_knob_set_names_the_same_keys_in_every_combination():
    with pytest.raises(ValueError, match="same keys"):
        registry.ArchSpec(model_type="x", architecture="X", knob_sets=(({"n_group": 1}, {"topk_group": 1}),))
    with pytest.raises(ValueError, match="both as knobs and in a knob set"):
        registry.ArchSpec(model_type="x", architecture="X", knobs={"n_group": (1, 2)}, knob_sets=(({"n_group": 1},),))


def test_possible_features_are_read_from_the_entry():
    assert "attn_logit_softcapping" in registry.possible_features(registry.get("gemma2"))
    assert registry.possible_features(registry.get("llama")) == []


@given(st.data())
def test_drawn_tensor_parallel_fits_the_config(data):
    config = {"num_attention_heads": data.draw(st.sampled_from([1, 2, 4, 6])),
              "num_key_value_heads": data.draw(st.sampled_from([1, 2, 3])), "intermediate_size": 96}
    drawn = data.draw(executions(config, ExecutionSurface(tensor_parallel=(1, 2, 4), plain_share=1, one_rank_share=1)))
    assert tensor_parallel_fits(config, drawn.tensor_parallel)
    assert config["num_attention_heads"] % drawn.tensor_parallel == 0


def test_execution_shrinks_to_the_plainest_run():
    from hypothesis import find

    config = {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96}
    assert find(executions(config), lambda e: True) == Execution()
    assert find(executions(config), lambda e: e.prefix_cache) == Execution(prefix_cache=True)
    assert find(executions(config), lambda e: e.kv_block) == Execution(kv_block=KV_BLOCKS[0])
    assert not tensor_parallel_fits({"num_attention_heads": 3, "num_key_value_heads": 3}, 2)
    assert tensor_parallel_fits({"num_attention_heads": 4, "num_key_value_heads": 1}, 2)  # kv replicated


@given(st.data())
def test_a_surface_draws_only_its_modes(data):
    config = {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96}
    only_ranks = ExecutionSurface(modes=("tensor_parallel",), one_rank_share=1)
    assert data.draw(executions(config, only_ranks)).modes() in ([], ["tensor_parallel"])


def test_kv_blocks_are_drawn_with_prompts_that_outgrow_one():
    from hypothesis import find

    spec, prompts = registry.get("llama"), PromptSurface(count=8, tokens=12)
    blocks = examples("llama", spec, spec.head_dims, 2, ExecutionSurface(modes=("kv_block",), plain_share=0), prompts)
    long = find(blocks, lambda ex: max(len(p) for p in ex.prompts) > KV_BLOCKS[0])
    assert long.execution == Execution(kv_block=KV_BLOCKS[0])
    plain = examples("llama", spec, spec.head_dims, 2, ExecutionSurface(modes=()), prompts)
    assert find(plain, lambda ex: True, settings=settings(max_examples=50)).execution == Execution()
    with pytest.raises(NoSuchExample):
        find(plain, lambda ex: max(len(p) for p in ex.prompts) > prompts.tokens, settings=settings(max_examples=50))


def test_joining_a_running_batch_is_drawn_over_two_prompts_longest_first():
    from hypothesis import find

    spec, prompts = registry.get("llama"), PromptSurface(count=8, tokens=12)
    joining = examples("llama", spec, spec.head_dims, 2, ExecutionSurface(modes=("join_running",), plain_share=1),
                       prompts)
    joined = find(joining, lambda ex: ex.execution.join_running)
    assert joined.execution == Execution(join_running=True)
    assert [len(p) for p in joined.prompts] == [3, 2]  # shrunk to the fewest, shortest prompts that can join
    many = find(joining, lambda ex: ex.execution.join_running and len(ex.prompts) > 3)
    assert [len(p) for p in many.prompts] == sorted((len(p) for p in many.prompts), reverse=True)
    with pytest.raises(NoSuchExample):
        find(joining, lambda ex: ex.execution.join_running and len(ex.prompts) == 1)
    with pytest.raises(ContractError, match="cannot join a running batch"):
        RunRequest(checkpoint="c", prompts=[[1, 2], [3, 4, 5]], decode_steps=2, dtype="float32", out="o",
                   execution=Execution(join_running=True))


def test_an_examples_id_names_only_the_modes_it_runs():
    """A mode added to Execution leaves the ids of examples that do not run it, and what is keyed by them."""
    (ex,) = sample("llama", 1, seed=0)
    chunked = replace(ex, execution=Execution(prefill_chunk=4))
    assert chunked.to_json()["execution"] == {"prefill_chunk": 4}
    assert "execution" not in ex.to_json()
    assert Example.from_json(chunked.to_json()) == chunked


def test_a_seed_draws_the_same_examples_whatever_modules_the_process_has_loaded(tmp_path, monkeypatch):
    """Hypothesis draws literals from local modules: a run, a replay and a test must not see that."""
    before = [ex.id for ex in sample("qwen2", 40, seed=3)]
    module = tmp_path / "constants_elsewhere.py"
    module.write_text("".join(f"K{i} = {i}\n" for i in (1, 2, 3, 5, 6, 7, 9, 11, 13, 17, 31, 63, 129, 257, 4099))
                      + "F = (0.25, 0.75, 1.5, 3.0, 7.0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("constants_elsewhere")
    assert [ex.id for ex in sample("qwen2", 40, seed=3)] == before
