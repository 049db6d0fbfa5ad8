"""Where parity's time goes, against the bare engines.

For each backend, the same tiny checkpoints run twice through the same worker:
once as parity runs them, one example after another as a search does (checkpoint
write, reference fp64 + fp32, the teardown of the engine the previous example left
held, engine load, forward with capture hooks, capture transfer, comparison), then
each bare (a fresh engine built, the same prefill and decode steps, no hooks,
nothing saved, the engine torn down). Run with ``nox -s bench``; prints a Markdown
table.

    python benchmarks/bench.py [--backend vllm --backend sglang] [--repeat 2] [--prompts 6,11] [--decode-steps 2]
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


def prompts(lengths: list[int]) -> tuple[tuple[int, ...], ...]:
    """One prompt per length, each from its own run of token ids (3..8 and 20..30 for the default 6 and 11)."""
    return tuple(tuple((3 + 17 * i + j) % 256 for j in range(n)) for i, n in enumerate(lengths))


def examples(seed: int, lengths: list[int], decode_steps: int) -> list[Example]:
    out = []
    for i, (arch, layers, rope) in enumerate(SHAPES):
        config = {"model_type": arch, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
                  "hidden_size": 128, "num_hidden_layers": layers, "intermediate_size": 256, "rms_norm_eps": 1e-6,
                  "vocab_size": 256, "tie_word_embeddings": False, "max_position_embeddings": 256,
                  "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, **rope}}
        if arch == "glm4":
            config.update(pad_token_id=None, eos_token_id=None)
        # a fresh weight seed per invocation: checkpoint writing is measured, not served from the cache
        out.append(Example(arch=arch, config=config, weight_seed=seed + i, decode_steps=decode_steps,
                           prompts=prompts(lengths)))
    return out


def measure(backend: str, repeat: int, lengths: list[int], decode_steps: int, out: Path) -> dict[str, float]:
    cfg = RunConfig(backends=parse_backends([backend], []), out=out / backend, command="benchmarks/bench.py")
    rows: dict[str, list[float]] = {}
    with Session(cfg, log=lambda m: None) as session:
        worker = session.workers[backend]
        for r in range(repeat):
            batch = examples(int(time.time()) * 100 + r * 10, lengths, decode_steps)
            # Parity's examples back to back, as a search draws them: each one's engine is released (torn down)
            # while it is judged and the next checkpoint written; what is left of that teardown when the next
            # example's request goes out is waited for ("released"). Timed whole, report writing included.
            for ex in batch:
                t0 = time.monotonic()
                record = session.evaluate(ex)
                rows.setdefault("wall", []).append(time.monotonic() - t0)
                (result,) = record.results
                assert result.status == "pass", (backend, ex.describe(), result.status, result.reason)
                for k, v in {**record.seconds, **{f"engine_{k}": v for k, v in result.seconds.items()}}.items():
                    rows.setdefault(k, []).append(v)
            session.settle()  # the last example's engine, released while it was judged
            for ex in batch:
                t0 = time.monotonic()
                reply = worker.call(RunRequest(checkpoint=str(session.cache / "checkpoints" / ex.checkpoint_id),
                                               prompts=[list(p) for p in ex.prompts], decode_steps=ex.decode_steps,
                                               dtype=cfg.dtype, out="", capture=False, fresh=True), cfg.timeout)
                # the first one tears down parity's last engine first: not the bare engine's time
                rows.setdefault("bare", []).append(time.monotonic() - t0 - reply.seconds["released"])
                rows.setdefault("bare_teardown", []).append(reply.seconds["teardown"])
    return {k: statistics.median(v) for k, v in rows.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", action="append", help="default: vllm and sglang")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--prompts", type=_lengths, default=[6, 11], metavar="LEN[,LEN...]",
                        help="one prompt per length, in tokens (at most 120). Default: 6,11")
    parser.add_argument("--decode-steps", type=int, default=2, choices=range(1, 9), metavar="1..8",
                        help="Default: %(default)r")
    args = parser.parse_args()
    backends = args.backend or ["vllm", "sglang"]
    with tempfile.TemporaryDirectory() as tmp:
        results = {b: measure(b, args.repeat, args.prompts, args.decode_steps, Path(tmp)) for b in backends}
    positions = sum(args.prompts) + len(args.prompts) * args.decode_steps
    print(f"Median seconds per example over {len(SHAPES) * args.repeat} examples "
          f"({', '.join(f'{a} {n} layer(s)' for a, n, _ in SHAPES)}; {len(args.prompts)} prompt(s) of "
          f"{', '.join(map(str, args.prompts))} tokens, prefill + {args.decode_steps} decode steps: {positions} "
          "token positions compared, fp32, CPU).\n")
    print("| backend | parity total | checkpoint | reference (fp64+fp32) | engine load | forward | save | "
          "held engine teardown (waited) | transfer | compare | bare engine (its teardown) | parity / bare | examples/min | "
          "positions/s |")
    print("|---|" + "---|" * 13)
    for b, m in results.items():
        total = m["wall"]
        print(f"| {b} | {total:.2f} | {m['checkpoint']:.2f} | {m['reference']:.2f} | {m['engine_load']:.2f} | "
              f"{m['engine_forward']:.3f} | {m['engine_save']:.3f} | {m['released'] + m['engine_released']:.2f} | "
              f"{m['engine_transfer']:.3f} | {m['compare']:.3f} | {m['bare']:.2f} ({m['bare_teardown']:.2f}) | "
              f"{total / m['bare']:.2f}x | {60 / total:.1f} | {positions / total:.0f} |")
    return 0


def _lengths(text: str) -> list[int]:
    try:
        lengths = [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of prompt lengths") from None
    if not lengths or not all(2 <= n <= 120 for n in lengths):
        raise argparse.ArgumentTypeError(f"prompt lengths must be 2..120 tokens (max_position_embeddings 256), "
                                         f"got {text!r}")
    return lengths


if __name__ == "__main__":
    sys.exit(main())
