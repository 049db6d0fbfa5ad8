"""Where parity's time goes, against the bare engines.

For each backend, the same tiny checkpoints run twice through the same worker:
once as parity runs them (checkpoint write, reference fp64 + fp32, engine load,
forward with capture hooks, capture transfer, comparison) and once bare (a fresh
engine built, the same prefill and decode steps, no hooks, nothing saved, the engine
torn down). The worker holds parity's engine for a next example of the same
structure; the bare run tears it down first, and that teardown, reported apart, is
counted in parity's time, not the bare one's. Run with ``nox -s bench``; prints a
Markdown table.

    python benchmarks/bench.py [--backend vllm --backend sglang] [--repeat 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from parity.backends import parse_backends
from parity.example import Example
from parity.session import RunConfig, Session
from parity.worker.contract import RunRequest

SHAPES = [  # ci-profile sizes
    ("llama", 1, {}), ("llama", 2, {}), ("llama", 4, {}),
    ("glm4", 1, {"partial_rotary_factor": 0.5}), ("glm4", 2, {"partial_rotary_factor": 0.5}),
    ("glm4", 4, {"partial_rotary_factor": 0.5}),
]


def examples(seed: int) -> list[Example]:
    out = []
    for i, (arch, layers, rope) in enumerate(SHAPES):
        config = {"model_type": arch, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
                  "hidden_size": 128, "num_hidden_layers": layers, "intermediate_size": 256, "rms_norm_eps": 1e-6,
                  "vocab_size": 256, "tie_word_embeddings": False, "max_position_embeddings": 256,
                  "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, **rope}}
        if arch == "glm4":
            config.update(pad_token_id=None, eos_token_id=None)
        # a fresh weight seed per invocation: checkpoint writing is measured, not served from the cache
        out.append(Example(arch=arch, config=config, weight_seed=seed + i, decode_steps=2,
                           prompts=(tuple(range(3, 9)), tuple(range(20, 31)))))
    return out


def measure(backend: str, repeat: int, out: Path) -> dict[str, float]:
    cfg = RunConfig(backends=parse_backends([backend], []), out=out / backend, command="benchmarks/bench.py")
    rows: dict[str, list[float]] = {}
    with Session(cfg, log=lambda m: None) as session:
        worker = session.workers[backend]
        for r in range(repeat):
            for ex in examples(seed=int(time.time()) * 100 + r * 10):
                record = session.evaluate(ex)
                (result,) = record.results
                assert result.status == "pass", (backend, ex.describe(), result.status, result.reason)
                t0 = time.monotonic()
                reply = worker.call(RunRequest(checkpoint=str(session.cache / "checkpoints" / ex.checkpoint_id),
                                               prompts=[list(p) for p in ex.prompts], decode_steps=ex.decode_steps,
                                               dtype=cfg.dtype, out="", capture=False, fresh=True), cfg.timeout)
                released = reply.seconds["released"]  # parity's engine, held after its example
                bare = time.monotonic() - t0 - released
                s = {**record.seconds, **{f"engine_{k}": v for k, v in result.seconds.items()},
                     "total": record.seconds["total"] + released, "engine_teardown": released, "bare": bare,
                     "bare_teardown": reply.seconds["teardown"]}
                for k, v in s.items():
                    rows.setdefault(k, []).append(v)
    return {k: statistics.median(v) for k, v in rows.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", action="append", help="default: vllm and sglang")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    backends = args.backend or ["vllm", "sglang"]
    with tempfile.TemporaryDirectory() as tmp:
        results = {b: measure(b, args.repeat, Path(tmp)) for b in backends}
    print(f"Median seconds per example over {len(SHAPES) * args.repeat} examples "
          f"({', '.join(f'{a} {n} layer(s)' for a, n, _ in SHAPES)}; 2 prompts of 6 and 11 tokens, "
          "prefill + 2 decode steps, fp32, CPU).\n")
    print("| backend | parity total | checkpoint | reference (fp64+fp32) | engine load | forward | save | "
          "teardown | transfer | compare | bare engine (its teardown) | parity / bare | examples/min |")
    print("|---|" + "---|" * 12)
    for b, m in results.items():
        total = m["total"]
        print(f"| {b} | {total:.2f} | {m['checkpoint']:.2f} | {m['reference']:.2f} | {m['engine_load']:.2f} | "
              f"{m['engine_forward']:.3f} | {m['engine_save']:.3f} | {m['engine_teardown']:.2f} | "
              f"{m['engine_transfer']:.3f} | {m['compare']:.3f} | {m['bare']:.2f} ({m['bare_teardown']:.2f}) | "
              f"{total / m['bare']:.2f}x | {60 / total:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
