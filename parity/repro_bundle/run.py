"""Show where this engine first departs from transformers on this bundle's model.

Rebuilds the checkpoint (make_checkpoint.py), runs each prompt's prefill through
transformers in float64 (the truth) and in the dtype under test (its own error is
each tensor's noise floor), and through the engine; compares the residual stream
after every decoder layer and the last token's logits, and prints the first
tensor whose relative L2 error leaves its band (tolerance.py: 10x the floor, never
below a couple of ulps). Exit code 1 when the engine diverges, 0 when it agrees.

Needs only the engine (which brings torch, transformers and safetensors):
    python run.py
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import engine  # noqa: E402  (the engine's runner, copied from parity unchanged; sets its environment)

EXAMPLE = json.loads((HERE / "example.json").read_text())
if EXAMPLE["device"] == "cpu" and hasattr(engine, "prepare_cpu"):
    engine.prepare_cpu()  # before the engine, or transformers, is first imported

import torch  # noqa: E402

import make_checkpoint  # noqa: E402
import tolerance  # noqa: E402  (parity's band rule, copied unchanged)


def resolve(root, path):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def reference(ckpt, dtype, prompts, layers_path):
    """Per prompt: the residual stream after each layer ([tokens, hidden]) and the last token's logits."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=getattr(torch, dtype), attn_implementation="eager",
                                                 use_safetensors=True).to(EXAMPLE["device"]).eval()
    out = []
    for prompt in prompts:
        streams = []
        handles = [layer.register_forward_hook(lambda m, a, o: streams.append(first(o)[0].double().cpu()))
                   for layer in resolve(model, layers_path)]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt], device=EXAMPLE["device"])).logits[0, -1]
        for h in handles:
            h.remove()
        out.append((streams, logits.double().cpu()))
    return out


def candidate(ckpt, dtype, prompts, layers_path):
    """The same tensors from the engine: one prefill per prompt, so a forward holds exactly its tokens."""
    loaded = engine.load(ckpt, dtype, EXAMPLE["device"], prompts, decode_steps=0)
    layers = resolve(engine.model(loaded), layers_path)
    out = []
    for prompt in prompts:
        streams, logits = [], []
        handles = [layer.register_forward_hook(
            lambda m, a, o: streams.append(engine.residual_stream(m, o, a)[: len(prompt)].double().cpu()))
            for layer in layers]
        try:
            engine.generate(loaded, [prompt], 0, lambda t: logits.append(t[-1].double().cpu()))
        finally:
            for h in handles:
                h.remove()
        out.append((streams, logits[0]))
    return out


def rel_l2(a, truth):
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - truth).norm() / truth.norm().clamp_min(1e-300))


def main() -> int:
    dtype, prompts = EXAMPLE["dtype"], EXAMPLE["prompts"]
    ckpt = str(make_checkpoint.main())
    truth = reference(ckpt, "float64", prompts, EXAMPLE["layers"])
    low = reference(ckpt, dtype, prompts, EXAMPLE["layers"])
    cand = candidate(ckpt, dtype, prompts, EXAMPLE["layers"])
    names = [f"layers.{i}" for i in range(len(truth[0][0]))] + ["logits"]
    print(f"{EXAMPLE['engine']} vs transformers, {dtype} on {EXAMPLE['device']}, {EXAMPLE['description']}")
    print(f"{'tensor':12} {'prompt':>6} {'rel. L2':>10} {'band':>10}  verdict")
    found = None
    for index, name in enumerate(names):
        for p in range(len(prompts)):
            pick = (lambda side: side[p][0][index]) if name != "logits" else (lambda side: side[p][1])
            err, band = rel_l2(pick(cand), pick(truth)), tolerance.band(rel_l2(pick(low), pick(truth)), dtype)
            diverged = not tolerance.within(err, band)
            print(f"{name:12} {p:>6} {err:>10.2e} {band:>10.2e}  {'DIVERGED' if diverged else 'ok'}")
            if diverged and found is None:
                found = (name, p, err, band)
    print()
    if found:
        name, p, err, band = found
        print(f"first divergence: {name} (prompt {p}: rel. L2 {err:.2e}, band {band:.2e})")
    else:
        print("no divergence: the engine agrees with transformers within the noise floor")
    print(f"parity reported: {EXAMPLE['parity_reported']}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
