"""Support decisions from a worker's capabilities, for the search and for ``parity archs``."""

from parity import registry
from parity.support import matrix, supports
from parity.worker.contract import Capabilities


def caps(engine="e", version="1", architectures=("Gemma2ForCausalLM",), lacking=None):
    return Capabilities(engine=engine, versions={engine: version, "torch": "2"}, architectures=list(architectures),
                        head_sizes=None, dtypes=["float32"], unsupported_features=lacking or {},
                        unsupported_execution={}, pid=1, python="py")


def test_feature_support_is_decided_from_the_engines_capabilities():
    hello = caps(lacking={"attn_logit_softcapping": "no logit_cap in its CPU attention"})
    assert registry.features({"sliding_window": 4, "attn_logit_softcapping": None}) == ["sliding_window"]
    assert supports(hello, "gemma2", {"sliding_window": 4, "attn_logit_softcapping": None}) is None
    reason = supports(hello, "gemma2", {"attn_logit_softcapping": 2.0})
    assert reason and "attn_logit_softcapping" in reason and "no logit_cap" in reason
    assert "does not register LlamaForCausalLM" in supports(hello, "llama")


def test_matrix_marks_partial_support_and_known_issues():
    every = [spec.architecture for spec in registry.ARCHITECTURES.values()]
    lines = matrix({"plain": caps(architectures=every),
                    "sg": caps("sglang", "0.5.23", every, {"attn_logit_softcapping": "ignores logit_cap"}),
                    "none": caps(architectures=())})
    rows = {line.split()[0]: line.split()[1:] for line in lines
            if line.split() and line.split()[0] in registry.ARCHITECTURES and len(line.split()) == 4}
    assert rows["llama"] == ["yes", "yes*", "no"]  # SGLang 0.5.23 drops mlp_bias, refuses non-SiLU MLPs
    assert rows["gemma2"] == ["yes", "partial*", "no"]
    assert rows["gemma"] == ["yes", "yes*", "no"]  # SGLang 0.5.23's GemmaMLP bug (parity/known_issues.py)
    assert "gemma2 on sg: sglang (sglang 0.5.23 torch 2) does not support attn_logit_softcapping: ignores logit_cap" in lines
    assert any(line.startswith("gemma on sg: known issue (mlp_out): ") for line in lines)
