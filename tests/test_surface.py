"""The config surface: every key the reference reads is varied, pinned with a reason or
measured neutral, and every varied key's drawn values act."""

import json

import pytest

from parity import registry, surface


def effect(key, what, **kw):
    return {"key": key, "effect": what, **kw}


def test_classes_pins_first_then_varied_then_measured():
    effects = surface.merge_effects([
        effect("hidden_size", "changes", drawn_act=True),
        effect("use_bidirectional_attention", "changes"),
        effect("return_dict", "rejected", error="AttributeError"),
        effect("sliding_window", "undefined"),
        effect("initializer_range", "neutral", tried=[0.04]),
        effect("mystery", "changes"),
        effect("beta_fast", "neutral"), effect("beta_fast", "changes", drawn_act=False),
    ])
    drawn = {"hidden_size": [64, 128], "beta_fast": [32.0, 4.0], "use_bidirectional_attention": [False, True]}
    s = surface.classify("gemma", effects, drawn)
    cls = {k.key: k.cls for k in s.keys}
    assert cls == {"hidden_size": "varied", "use_bidirectional_attention": "pinned", "return_dict": "pinned",
                   "sliding_window": "pinned", "initializer_range": "neutral", "mystery": "unclassified",
                   "beta_fast": "varied"}
    assert [k.key for k in s.of("unclassified")] == ["mystery"]
    # changing: hidden_size, use_bidirectional_attention, mystery, beta_fast; varied among them: 2
    assert s.coverage == pytest.approx(2 / 4)
    assert {k.key: k.drawn_act for k in s.of("varied")} == {"hidden_size": True, "beta_fast": False}


def test_generic_knobs_are_the_measured_keys_but_sizes_fixed_and_pinned_ones(monkeypatch):
    monkeypatch.setattr(registry, "generic_table", lambda: {"versions": {}, "entries": {"gpt2": {
        "architecture": "GPT2LMHeadModel", "keys": {"hidden_size": "n_embd", "num_hidden_layers": "n_layer",
                                                    "num_attention_heads": "n_head", "vocab_size": "vocab_size"},
        "fixed": {"eos_token_id": None}}}})
    registry.generic_knobs.cache_clear()
    registry.generic_entries.cache_clear()
    try:
        effects = surface.merge_effects([
            effect("n_embd", "changes", value=64, tried=[128]),  # a size, under the family's name
            effect("eos_token_id", "changes", value=None, tried=[4]),  # fixed
            effect("layer_types", "changes", value=["full_attention"], tried=[["sliding_attention"]]),  # pinned
            effect("activation_function", "changes", value="gelu_new", tried=["silu", "gelu"]),
            effect("scale_attn_weights", "neutral", value=True, tried=[False]),
            effect("rope_parameters", "skipped", value={"rope_type": "default", "rope_theta": 1e4}),
            effect("rope_parameters.rope_theta", "changes", value=1e4, tried=[2e4]),
            effect("rope_parameters.rope_type", "changes", value="default", tried=["linear"]),
            effect("summary_type", "rejected"),  # no value to draw: pinned by the measurement
        ])
        s = surface.classify("gpt2", effects, {})
    finally:
        registry.generic_knobs.cache_clear()
        registry.generic_entries.cache_clear()
    assert s.knobs == {"activation_function": ["gelu_new", "gelu"],
                       "rope_parameters": [{"rope_type": "default", "rope_theta": 1e4},
                                           {"rope_type": "default", "rope_theta": 2e4},
                                           {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}]}
    cls = {k.key: k.cls for k in s.keys}
    assert (cls["eos_token_id"], cls["summary_type"]) == ("pinned", "pinned")
    assert surface.classify("llama", {"summary_type": effect("summary_type", "rejected")}, {}).of("unclassified")


def test_drawn_values_count_absence_as_a_value():
    values = surface.drawn_values([{"a": 1, "r": {"t": "yarn"}}, {"a": 1, "r": {"t": "yarn", "f": 2.0}}])
    assert values == {"a": [1], "r.t": ["yarn"], "r.f": [surface.ABSENT, 2.0]}


def test_a_run_says_which_varied_keys_its_examples_exercised():
    configs = [{"a": 1, "r": {"t": "yarn"}}, {"a": 2, "r": {"t": "yarn", "f": 2.0}}, {"a": 2, "b": 1}]
    assert surface.exercised("llama", configs, ["a", "b", "c", "rope.f"], {"r.f": "rope.f"}) == ["a", "b", "rope.f"]
    assert surface.exercised("llama", configs[:1], ["a", "b"], {}) == []


def test_probe_configs_reach_every_rope_type_the_strategies_draw():
    configs = surface.probe_configs("llama")
    types = {c["rope_parameters"]["rope_type"] for c in configs}
    assert types == set(registry.get("llama").rope_types)
    # The RoPE probes themselves (after the drawn configs) cross each type's threshold.
    outgrown = [c for c in configs[surface.PROBE_DRAWS:]
                if c["rope_parameters"].get("original_max_position_embeddings", 99) < len(surface.PROBE_PROMPT)]
    assert {c["rope_parameters"]["rope_type"] for c in outgrown} >= {"llama3", "yarn", "longrope"}


def test_probes_of_a_family_with_rope_per_layer_type_reach_every_type_under_every_rope_type():
    types = registry.get("gemma3_text").rope_layer_types
    probes = surface.probe_configs("gemma3_text")[surface.PROBE_DRAWS + 1:]
    assert probes
    for config in probes:
        assert set(config["layer_types"]) == set(types)  # every type's parameters are read
        assert len({r["rope_type"] for r in config["rope_parameters"].values()}) == 1  # one variant, every type
    assert {c["rope_parameters"][types[1]]["rope_type"] for c in probes} >= set(registry.get("gemma3_text").rope_types[1:])


def test_rope_probes_take_the_familys_own_parameters():
    # transformers' DeepSeek-V3 fails a scaled RoPE without a factor: its entry always states LongRoPE's.
    probes = [c["rope_parameters"] for c in surface.probe_configs("deepseek_v3")[surface.PROBE_DRAWS + 1:]]
    longrope = [r for r in probes if r["rope_type"] == "longrope"]
    assert longrope and all(r["factor"] == 2.0 for r in longrope)
    assert not any("factor" in r for c in surface.probe_configs("llama")[surface.PROBE_DRAWS + 1:]
                   for r in [c["rope_parameters"]] if r["rope_type"] == "longrope")  # the plainest omits it


def test_nested_config_dicts_are_recorded_and_changed_key_by_key():
    from parity.worker.surface import _RecordingDict, put

    reads = {}
    rope = _RecordingDict({"full_attention": {"rope_type": "default", "rope_theta": 1e6}}, "rope_parameters", reads)
    assert rope["full_attention"]["rope_theta"] == 1e6 and rope.get("full_attention").get("factor") is None
    assert reads["rope_parameters.full_attention.rope_theta"] == ("item", 1e6)
    assert reads["rope_parameters.full_attention.factor"] == ("get", "<absent>")
    config = {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6}, "other": {}}}
    changed = put(config, "rope_parameters.full_attention.rope_type", "linear")
    assert changed["rope_parameters"] == {"full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 2.0},
                                          "other": {}}
    assert config["rope_parameters"]["full_attention"]["rope_type"] == "default"  # a copy


# The generic tier too: a dense family, GPT-2's own key names, a mixture of experts.
GENERIC_MEASURED = ("olmo2", "gpt2", "ernie4_5_moe")


@pytest.mark.parity
@pytest.mark.parametrize("arch", [*registry.ARCHITECTURES, *GENERIC_MEASURED])
def test_every_key_read_is_varied_pinned_or_neutral_and_drawn_values_act(parity_sessions, arch):
    session = parity_sessions(["transformers@surface"])
    measured = surface.measure(session.reference, arch)
    assert measured.keys, "no config read was recorded"
    blind = [(k.key, k.effect, k.reason) for k in measured.of("unclassified")]
    assert not blind, f"{arch}: keys read but neither varied, pinned nor neutral: {blind}"
    idle = [(k.key, k.effect) for k in measured.of("varied") if not (k.effect == "changes" and k.drawn_act)]
    assert not idle, f"{arch}: varied keys whose drawn values never change an activation: {idle}"
    # A registry entry draws what it pins; the generic tier pins what it shrinks, so only the above holds there.
    assert measured.coverage >= 0.95 or registry.get(arch).tier == "generic", surface.render([measured])
    # Reports compute their coverage from the stored measurement: it must be today's.
    version = session.reference.capabilities.versions["transformers"]
    stored = json.loads(surface.measured_path(version).read_text())[arch]
    assert stored == {"effects": {k.key: k.effect for k in measured.keys}, "aliases": measured.aliases,
                      **({"knobs": measured.knobs} if measured.knobs else {})}, "run: parity surface --write"


def test_reports_carry_the_stored_coverage():
    stored = sorted(registry.MEASURED.glob("surface-transformers-*.json"))
    assert stored, "no measured surface is stored (parity surface --write)"
    version = stored[-1].name.removeprefix("surface-transformers-").removesuffix(".json")
    got = surface.coverage(["llama", "gpt_j", "not-an-arch"], version)
    assert set(got) == {"llama", "gpt_j"}
    assert all(c.changing and c.varied <= c.changing and c.coverage == c.varied / c.changing for c in got.values())
    assert surface.coverage(["llama"], "0.0.0-never-measured") == {}
