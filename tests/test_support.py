"""Support decisions from a worker's capabilities, for the search and for ``parity archs``."""

from parity import registry
from parity.support import matrix, supports
from parity.worker.contract import Capabilities, Execution


def caps(engine="e", version="1", architectures=("Gemma2ForCausalLM",), lacking=None, modes=None):
    return Capabilities(engine=engine, versions={engine: version, "torch": "2"}, architectures=list(architectures),
                        head_sizes=None, dtypes=["float32"], unsupported_dtypes={"bfloat16": "no AVX512-BF16 here"},
                        unsupported_features=lacking or {}, unsupported_execution=modes or {}, pid=1, python="py")


def test_feature_support_is_decided_from_the_engines_capabilities():
    hello = caps(lacking={"attn_logit_softcapping": "no logit_cap in its CPU attention"})
    assert registry.features({"sliding_window": 4, "attn_logit_softcapping": None}) == ["sliding_window"]
    assert supports(hello, "gemma2", {"sliding_window": 4, "attn_logit_softcapping": None}) is None
    reason = supports(hello, "gemma2", {"attn_logit_softcapping": 2.0})
    assert reason and "attn_logit_softcapping" in reason and "no logit_cap" in reason
    assert "does not register LlamaForCausalLM" in supports(hello, "llama")
    single = caps(architectures=("LlamaForCausalLM",), modes={"tensor_parallel": "one rank in-process"})
    assert supports(single, "llama", {}, execution=Execution(prefill_chunk=4)) is None
    assert supports(single, "llama", {}, execution=Execution(tensor_parallel=2)).endswith(
        "cannot run with tensor_parallel: one rank in-process")


def test_a_dtype_the_engine_refuses_here_is_unsupported_with_its_reason():
    hello = caps()
    assert supports(hello, "gemma2", {}, "float32") is None
    assert supports(hello, "gemma2", {}, "bfloat16") == "e (e 1 torch 2) does not run bfloat16 here: no AVX512-BF16 here"
    assert supports(hello, "gemma2", {}, "float16") == "e (e 1 torch 2) does not run float16 here: it runs float32"


def test_matrix_marks_partial_support_and_known_issues():
    every = [spec.architecture for spec in registry.ARCHITECTURES.values()]
    lines = matrix({"plain": caps(architectures=every),
                    "sg": caps("sglang", "0.5.23", every, {"attn_logit_softcapping": "ignores logit_cap"},
                               {"prefix_cache": "no scheduler"}),
                    "none": caps(architectures=())})
    rows = {line.split()[0]: line.split()[1:] for line in lines
            if line.split() and line.split()[0] in registry.ARCHITECTURES and len(line.split()) == 4}
    assert rows["llama"] == ["yes", "yes*", "no"]  # SGLang 0.5.23 drops mlp_bias, refuses non-SiLU MLPs
    assert rows["gemma2"] == ["yes", "partial*", "no"]
    assert rows["gemma"] == ["yes", "yes*", "no"]  # SGLang 0.5.23's GemmaMLP bug (parity/known_issues.py)
    assert "gemma2 on sg: sglang (sglang 0.5.23 torch 2) does not support attn_logit_softcapping: ignores logit_cap" in lines
    assert any(line.startswith("gemma on sg: known issue (mlp_out): ") for line in lines)
    assert "every architecture on sg: cannot run with prefix_cache: no scheduler" in lines
