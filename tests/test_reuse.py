"""An engine held between requests of one structure, its weights reloaded in place, serves exactly as a fresh one:
every parameter and persistent buffer of its model equals a fresh load's, tensor by tensor, and so does every captured
activation (bit for bit), with a stale prefix cache as the trap a missing reset would fall into."""

import json
import subprocess
from pathlib import Path

import pytest

from parity import envs
from parity.backends import BACKENDS

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.parity

# Each case: checkpoint A (seed 1), then checkpoint B (seed 2, same config) into the held engine, compared with
# a fresh engine for B; the next case's config differs, so its first request tears the held engine down.
SCRIPT = r'''
import importlib, itertools, json, sys, tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from parity import checkpoint, registry
from parity.worker.contract import Execution, RunRequest

engine, cases = sys.argv[1], json.loads(sys.argv[2])
adapter = importlib.import_module(f"parity.adapters.{engine}").Adapter()
runner = importlib.import_module(f"parity.adapters.{engine}_runner")
tmp = Path(tempfile.mkdtemp())


def tensors(loaded):
    """What a load writes (parameters, persistent buffers), then the construction caches (non-persistent
    buffers, such as RoPE's cos/sin table) that neither a checkpoint nor a reload touches."""
    model = runner.model(loaded)
    state = {"parameter " + n: t for n, t in model.named_parameters(remove_duplicate=False)}
    caches = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for n, t in module._buffers.items():
            if t is not None:
                into = caches if n in module._non_persistent_buffers_set else state
                into["buffer " + ".".join(filter(None, (prefix, n)))] = t
    return ({n: t.detach().clone() for n, t in state.items()}, {n: t.detach().clone() for n, t in caches.items()})


def run(case, seed, tag):
    ckpt = tmp / f"{case['name']}-{seed}"
    if not ckpt.exists():
        checkpoint.write(case["config"], seed, str(ckpt))
    out = tmp / f"{case['name']}-{tag}.safetensors"
    reply = adapter.run(RunRequest(checkpoint=str(ckpt), prompts=case["prompts"], decode_steps=2, dtype="float32",
                                   out=str(out), modules=asdict(registry.get(case["arch"]).modules),
                                   execution=Execution(prefix_cache=case["prefix_cache"])))
    return reply, tensors(adapter._held[1]) if adapter._held else ({}, {}), load_file(str(out))


def differing(a, b):
    if sorted(a) != sorted(b):
        return [f"names differ: {sorted(set(a) ^ set(b))}"]
    return [f"{n}: shape {tuple(a[n].shape)} vs {tuple(b[n].shape)}" if a[n].shape != b[n].shape
            else f"{n}: {a[n].dtype} vs {b[n].dtype}, max |diff| {(a[n].double() - b[n].double()).abs().max().item():.3g}"
            for n in a if a[n].shape != b[n].shape or not torch.equal(a[n], b[n])]


out = []
for case in cases:
    first, _, acts_a = run(case, 1, "A")
    reused, (weights, caches), acts = run(case, 2, "B-reused")
    adapter.close()
    fresh, (fresh_weights, fresh_caches), fresh_acts = run(case, 2, "B-fresh")
    out.append({"name": case["name"], "reused": [first.reused, reused.reused, fresh.reused],
                "held_torn_down": first.seconds["released"] > 0, "tensors": len(weights),
                "holding_values": sum(t.numel() > 0 for t in weights.values()),
                "activations": len(acts), "a_differs": len(differing(acts_a, fresh_acts)),
                "differing_tensors": differing(weights, fresh_weights),
                "differing_activations": differing(acts, fresh_acts),
                "differing_caches": differing(caches, fresh_caches)})
adapter.close()
print(json.dumps(out))
'''


def _llama(tied: bool) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 64, "hidden_size": 128, "num_hidden_layers": 2,
            "intermediate_size": 96, "rms_norm_eps": 1e-6, "vocab_size": 256, "tie_word_embeddings": tied,
            "max_position_embeddings": 256, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}


# GLM-4-MoE: fused expert weights the loader writes expert by expert, a router bias buffer drawn at random
# (e_score_correction_bias), shared experts and a dense first layer.
GLM4_MOE = {"model_type": "glm4_moe", "architectures": ["Glm4MoeForCausalLM"], "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 64, "hidden_size": 128, "num_hidden_layers": 2,
            "intermediate_size": 96, "rms_norm_eps": 1e-5, "vocab_size": 256, "tie_word_embeddings": False,
            "max_position_embeddings": 256,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
            "attention_bias": True, "use_qk_norm": True, "first_k_dense_replace": 1, "moe_intermediate_size": 32,
            "n_shared_experts": 1, "routed_scaling_factor": 2.5, "norm_topk_prob": True, "n_routed_experts": 4,
            "n_group": 1, "topk_group": 1, "num_experts_per_tok": 2, "hidden_act": "silu", "pad_token_id": None,
            "eos_token_id": None, "bos_token_id": None}
PROMPTS = [[3, 1, 4, 1, 5, 9, 2], [6, 5, 3]]
SHARED = list(range(10, 42))  # one whole KV block of vLLM's prefix cache (parity.adapters.vllm.PREFIX_BLOCK)
CASES = [
    {"name": "llama-untied", "arch": "llama", "config": _llama(False), "prompts": PROMPTS, "prefix_cache": False},
    {"name": "llama-tied", "arch": "llama", "config": _llama(True), "prompts": PROMPTS, "prefix_cache": False},
    {"name": "glm4_moe", "arch": "glm4_moe", "config": GLM4_MOE, "prompts": PROMPTS, "prefix_cache": False},
    # A's KV of the shared prefix, left cached, would be B's prompt 0's prefix hit: stale keys and values.
    {"name": "llama-prefix-cache", "arch": "llama", "config": _llama(False),
     "prompts": [SHARED + [1, 2], SHARED + [3, 4, 5]], "prefix_cache": True},
]


def reuse_checked(engine: str, cases: list[dict], rebuilt: set[str] = frozenset()) -> None:
    """Every case reuses the held engine for B and matches a fresh one, but those ``rebuilt``, whose engine the
    adapter refuses to hold: all three requests build one."""
    python = envs.ensure(BACKENDS[engine], "cpu")
    proc = subprocess.run([str(python), "-c", SCRIPT, engine, json.dumps(cases)], capture_output=True, text=True,
                          timeout=900, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [c["name"] for c in out] == [c["name"] for c in cases]
    for i, case in enumerate(out):
        assert case["reused"] == [False, case["name"] not in rebuilt, False], case
        # the previous case's engine, of another structure, was held until this case's first request
        assert case["held_torn_down"] == (i > 0 and out[i - 1]["name"] not in rebuilt), case
        # vLLM's CPU linears keep their weights packed for the GEMM, their parameters emptied: their values are
        # compared through the activations only
        assert case["activations"] > 0 and (case["name"] in rebuilt or case["holding_values"] > 0), case
        assert case["a_differs"] > 0, case  # the weights reloaded are not those of A
        # What the reload writes, and every activation it serves, equal a fresh load's. The construction caches
        # are built anew with the fresh engine, not reloaded: they agree in every run but one of CI's (both RoPE
        # tables of an SGLang Llama, values unknown, not reproduced here in 17 runs), so a difference there is
        # shown (differing_caches) and judged through the activations it would change.
        assert (case["differing_tensors"], case["differing_activations"]) == ([], []), case


def test_vllm_reload_equals_a_fresh_load():
    # vLLM 0.32's in-place reload of fused experts on CPU differs from a fresh load (parity.adapters.vllm.structure)
    reuse_checked("vllm", CASES, rebuilt={"glm4_moe"})


def test_sglang_reload_equals_a_fresh_load():
    # parity drives SGLang without its scheduler: no prefix cache to run
    reuse_checked("sglang", [c for c in CASES if not c["prefix_cache"]])
