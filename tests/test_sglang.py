"""Real SGLang-CPU workers next to vLLM-CPU: three-way parity, prefill and decode."""

from pathlib import Path

import pytest

from parity import registry
from parity.profiles import get
from parity.runner import search

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "patches"
pytestmark = pytest.mark.parity


# Divergences parity found in SGLang 0.5.23 itself (see docs in the registry entries):
# kept visible as expected failures, not hidden by narrowing the strategies.
SGLANG_BUGS = {
    "gemma": "GemmaMLP hard-codes exact GELU (GeluAndMul('none')), ignoring hidden_activation="
             "'gelu_pytorch_tanh': layers.0.mlp_out off by ~2e-4",
    "phi3": "Phi3ForCausalLM (LlamaAttention) reads partial_rotary_factor only as a top-level config "
            "attribute; transformers 5 configs keep it in rope_parameters, so RoPE rotates the full head",
}


def _arch_params():
    return [pytest.param(a, marks=pytest.mark.xfail(reason=SGLANG_BUGS[a], strict=False)) if a in SGLANG_BUGS else a
            for a in registry.ARCHITECTURES]


@pytest.mark.parametrize("arch", _arch_params())
def test_three_way_agreement_prefill_and_decode(parity_sessions, arch):
    session = parity_sessions(["vllm", "sglang"])
    minimal = search(session, arch, get("dev"), seed=2)
    assert minimal is None, [r for r in session.records[minimal].results if r.status != "pass"]
    records = [ex for ex in session.records.values() if ex.arch == arch]
    assert records
    for ex in records:
        by_backend = {r.backend: r for r in ex.results}
        if by_backend["sglang"].status == "unsupported":
            # a feature SGLang's CPU attention lacks (e.g. soft-capping): said, never passed
            assert "does not support" in by_backend["sglang"].reason
            assert set(by_backend) == {"vllm", "sglang"}
            del by_backend["sglang"]
        else:
            assert set(by_backend) == {"vllm", "sglang", "vllm~sglang"}
        for r in by_backend.values():
            assert r.status == "pass" and r.max_rel_l2 < 1e-5
            steps = {row.step for row in r.rows if row.verdict == "ok"}
            assert steps == set(range(ex.decode_steps + 1)), "prefill and every decode step compared"
            assert {row.prompt for row in r.rows} == set(range(len(ex.prompts)))


def test_raw_layer_output_instead_of_residual_snapshot_is_reported(parity_sessions):
    session = parity_sessions(["sglang"], [f"sglang={FIXTURES / 'sglang_raw_residual.py'}"])
    minimal = search(session, "llama", get("dev"), seed=2)
    assert minimal is not None
    (result,) = session.records[minimal].results
    d = result.first_divergence
    assert result.status == "diverged"
    assert (d.tensor, d.kind, d.layer, d.step) == ("layers.0.residual", "residual", 0, 0)
    assert d.rel_l2 > 0.1  # O(1): the pending contribution is not the stream
