"""The worker contract: records round-trip, and a mismatched parity is refused with a clear error."""

from dataclasses import replace

import pytest

from parity.worker import contract
from parity.worker.contract import Capabilities, ContractError, Execution, RunRequest


def test_requests_round_trip_and_unknown_ones_are_refused():
    request = RunRequest(checkpoint="c", prompts=[[1, 2]], decode_steps=1, dtype="float32", out="o",
                         modules={"layers": "h"}, forced=[[7]])
    assert contract.request_from_json(contract.request_to_json(request)) == request
    chunked = replace(request, execution=Execution(prefill_chunk=4, prefix_cache=True))
    assert contract.request_from_json(contract.request_to_json(chunked)) == chunked
    with pytest.raises(ContractError, match=r"Execution: unknown field\(s\) ranks"):
        contract.request_from_json(contract.request_to_json(request) | {"execution": {"ranks": 2}})
    with pytest.raises(ContractError, match="unknown operation 'capabilities'"):
        contract.request_from_json({"op": "capabilities"})
    bad = {k: v for k, v in contract.request_to_json(request).items() if k != "out"} | {"seed": 1}
    with pytest.raises(ContractError, match=r"unknown field\(s\) seed; missing field\(s\) out"):
        contract.request_from_json(bad)

def test_hello_checks_the_protocol_version_first():
    caps = Capabilities(engine="vllm", versions={"vllm": "0.32.0", "torch": "2.13.0"}, architectures=["X"],
                        head_sizes=None, dtypes=["float32"], unsupported_dtypes={"bfloat16": "no AVX512-BF16"},
                        unsupported_features={}, unsupported_execution={}, pid=1, python="py")
    hello = contract.to_json(caps)
    assert contract.hello(hello) == caps and caps.engine_version == "0.32.0"
    older = {"engine": "vllm", "versions": {}, "architectures": [], "protocol": 1}
    with pytest.raises(ContractError, match=f"protocol version 1 and this parity {contract.PROTOCOL_VERSION}: it imported another parity"):
        contract.hello(older)
    with pytest.raises(ContractError, match="protocol version None"):
        contract.hello({"engine": "vllm"})
