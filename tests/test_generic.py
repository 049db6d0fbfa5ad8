"""The generic tier: architectures without a registry entry, derived from transformers' config classes and
compared at embed / per-layer residual / final norm / logits granularity."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

import known
from parity import envs, generic_tier, profiles, registry, strategies
from parity.backends import BACKENDS
from parity.search import search

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "patches"

GPT2_LIKE = {"architecture": "GPT2LMHeadModel", "keys": {"hidden_size": "n_embd", "num_hidden_layers": "n_layer",
                                                          "num_attention_heads": "n_head", "vocab_size": "vocab_size"},
             "fixed": {"eos_token_id": None}}


def generic_spec(monkeypatch, entries):
    monkeypatch.setattr(registry, "generic_table", lambda: {"versions": {}, "entries": entries})
    registry.generic_entries.cache_clear()
    return registry.generic_entries()


@pytest.fixture(autouse=True)
def fresh_generic_entries():
    """Entries and knobs derived from the stored tables, before and after a test that replaces them."""
    registry.generic_knobs.cache_clear()
    registry.generic_entries.cache_clear()
    yield
    registry.generic_knobs.cache_clear()
    registry.generic_entries.cache_clear()


def test_generic_entries_leave_out_registry_families_and_underivable_ones(monkeypatch):
    entries = generic_spec(monkeypatch, {"gpt2": GPT2_LIKE, "llama": {**GPT2_LIKE, "architecture": "LlamaForCausalLM"},
                                         "mamba2": {"architecture": "Mamba2ForCausalLM", "error": "no heads"}})
    assert list(entries) == ["gpt2"]
    assert registry.get("gpt2").tier == "generic" and registry.get("llama").tier == "full"
    assert (entries["gpt2"].kv_heads, entries["gpt2"].gqa_groups) == ((2, 4), (1,))  # no kv key: multi-head


def test_generic_entries_take_the_derived_layers_and_multi_head_attention(monkeypatch):
    keys = {**GPT2_LIKE["keys"], "num_key_value_heads": "num_key_value_heads"}
    entries = generic_spec(monkeypatch, {"gqa": {**GPT2_LIKE, "keys": keys},
                                         "hybrid": {**GPT2_LIKE, "keys": keys, "layers": 4},
                                         "mla": {**GPT2_LIKE, "keys": keys, "multi_head": True}})
    assert entries["gqa"].layers == registry.GENERIC_SIZES["layers"] and entries["gqa"].gqa_groups == (1, 2)
    assert entries["hybrid"].layers == (4, 4)
    assert entries["mla"].gqa_groups == (1,)
    with pytest.raises(registry.UnknownArchitecture):
        registry.get("mamba2")


def test_generic_configs_draw_only_the_config_class_sizes_under_its_own_names(monkeypatch):
    spec = generic_spec(monkeypatch, {"gpt2": GPT2_LIKE})["gpt2"]

    @settings(max_examples=30, database=None)
    @given(st.data())
    def check(data):
        config = data.draw(strategies.generic_configs(spec, spec.head_dims))
        assert set(config) == {"model_type", "architectures", "n_embd", "n_layer", "n_head", "vocab_size",
                               "eos_token_id"}
        canonical = registry.canonical_config("gpt2", config)
        assert canonical["hidden_size"] % canonical["num_attention_heads"] == 0
        assert canonical["hidden_size"] // canonical["num_attention_heads"] in spec.head_dims

    check()


def test_generic_configs_move_at_most_two_measured_knobs_off_their_defaults(monkeypatch):
    knobs = {"attention_bias": [False, True], "hidden_act": ["silu", "gelu", "relu"], "rms_norm_eps": [1e-5, 2e-5]}
    monkeypatch.setattr(registry, "generic_knobs", lambda: {"gpt2": knobs})
    spec = generic_spec(monkeypatch, {"gpt2": GPT2_LIKE})["gpt2"]
    moved = set()

    @settings(max_examples=60, database=None)
    @given(st.data())
    def check(data):
        config = data.draw(strategies.generic_configs(spec, spec.head_dims))
        off = {k for k, values in knobs.items() if config[k] != values[0]}
        assert len(off) <= strategies.GENERIC_KNOBS_OFF
        assert all(config[k] in knobs[k] for k in knobs)
        moved.update(off)

    check()
    assert moved == set(knobs)
    plainest = find(strategies.generic_configs(spec, spec.head_dims), lambda c: True)
    assert {k: plainest[k] for k in knobs} == {k: v[0] for k, v in knobs.items()}
    # A failure that needs one knob shrinks to that knob alone.
    needs_relu = find(strategies.generic_configs(spec, spec.head_dims), lambda c: c["hidden_act"] == "relu")
    assert {k for k, values in knobs.items() if needs_relu[k] != values[0]} == {"hidden_act"}


DISCOVER = """
import json
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from parity.worker.capture import CaptureError, discover

found = {}
for model_type, sizes in [("gpt2", {"n_layer": 2, "n_embd": 64, "n_head": 2}),
                          ("opt", {"num_hidden_layers": 3, "hidden_size": 64, "num_attention_heads": 2}),
                          ("granitemoe", {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2,
                                          "num_local_experts": 2, "intermediate_size": 64})]:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, vocab_size=256, **sizes))
    found[model_type] = discover(model)
model.config.num_hidden_layers = 5
try:
    discover(model)
except CaptureError as exc:
    found["error"] = str(exc)
print(json.dumps(found))
"""


def in_transformers(script: str):
    """What ``script``, run in the reference's environment, prints last (as JSON)."""
    python = envs.ensure(BACKENDS["transformers"], "cpu")
    proc = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parity
def test_discover_finds_decoder_layers_and_final_norm_on_transformers_models():
    assert in_transformers(DISCOVER) == {
        "gpt2": ["transformer", "h", "ln_f"],
        "opt": ["model.decoder", "layers", "final_layer_norm"],
        "granitemoe": ["model", "layers", "norm"],
        "error": "GraniteMoeForCausalLM has no list of its 5 decoder layers"}


@pytest.mark.parity
def test_derived_sizes_are_fields_the_config_class_takes():
    # GPT-BigCode derives num_key_value_heads from multi_query after init: written as drawn, it contradicted the
    # one key/value head transformers builds, and vLLM, reading it, sized its attention for more.
    keys = in_transformers("import json; from parity.worker.generic import derive; "
                           "print(json.dumps({t: derive(t)['keys'] for t in ('gpt_bigcode', 'llama')}))")
    assert "num_key_value_heads" not in keys["gpt_bigcode"] and keys["gpt_bigcode"]["num_attention_heads"] == "n_head"
    assert keys["llama"]["num_key_value_heads"] == "num_key_value_heads"


def test_the_table_lists_each_model_type_with_its_tier():
    table = {"versions": {"vllm": "0.32.0"}, "entries": {"gpt2": GPT2_LIKE, "llama": GPT2_LIKE,
                                                          "mamba2": {"architecture": "M", "error": "no heads"}}}
    lines = generic_tier.render(table)
    assert lines[0].startswith("3 model types")
    assert [line.split()[-1] for line in lines[1:]] == ["vocab_size", "entry)", "heads"]


@pytest.mark.parity
def test_the_stored_generic_table_is_what_the_pinned_engines_and_transformers_give(parity_sessions):
    session = parity_sessions(["vllm", "sglang"])
    derived = generic_tier.derive(session.reference, session.engines)
    stored = json.loads(registry.GENERIC_TABLE.read_text())
    assert derived["entries"], "no architecture is shared"
    assert derived == stored, "run: parity generic --write"


@pytest.mark.parity
# olmo2: vLLM runs it through its Transformers backend; opt: SGLang passes its layers forward_batch by keyword;
# minicpm3: SGLang's layers take the residual yet return (stream, None); exaone4: vLLM's post-norm layers take the
# residual yet return (stream, mid-layer stream), as only the final norm's call shows (SGLang refuses it on CPU)
@pytest.mark.parametrize("arch, engines", [("gpt2", ["vllm", "sglang"]), ("olmo2", ["vllm", "sglang"]),
                                           ("opt", ["vllm", "sglang"]), ("minicpm3", ["vllm", "sglang"]),
                                           ("exaone4", ["vllm"])])
def test_generic_families_agree_with_the_engines_layer_by_layer(parity_sessions, arch, engines):
    session = parity_sessions(engines)
    minimal, records = known.search_judging(session, arch, profiles.get("dev"), seed=1)
    assert minimal is None, session.records[minimal].results
    versions = [(w.capabilities.engine, w.capabilities.engine_version) for w in session.engines]
    for ex in records:  # a knob an engine port gets wrong is a known issue, and only then
        for r in ex.results:
            known.check(r, versions, arch, ex)
    # Each engine compared some examples outside its known issues.
    results = [r for ex in records for r in ex.results if r.status != "unsupported" and not r.known_issue]
    assert {r.backend for r in results} >= set(engines) and {r.status for r in results} == {"pass"}
    assert 0 < max(r.max_rel_l2 for r in results) < 1e-5
    for ex in records:  # the generic granularity, every layer's residual stream included
        layers = registry.canonical_config(arch, ex.config)["num_hidden_layers"]
        for r in ex.results:
            if r.status == "pass":
                assert {row.tensor for row in r.rows if row.step == 0} == {
                    "embed", "final_norm", "logits", *(f"layers.{i}.residual" for i in range(layers))}


@pytest.mark.parity
def test_a_generic_family_bug_is_caught_at_its_layer_and_shrunk(parity_sessions):
    patch = FIXTURES / "g1_vllm_gpt2_gelu_exact.py"
    session = parity_sessions(["vllm"], [f"vllm={patch}"])
    minimal = search(session, "gpt2", profiles.get("dev"), seed=1)
    assert minimal is not None
    record = session.records[minimal]
    (result,) = [r for r in record.results if r.backend == "vllm"]
    d = result.first_divergence
    assert result.status == "diverged" and (d.tensor, d.step) == ("layers.0.residual", 0)
    assert registry.canonical_config("gpt2", record.config)["num_hidden_layers"] == 1
