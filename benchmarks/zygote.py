"""Issue 15's other way to take an engine's teardown off the critical path, measured: a zygote that has imported
the engine forks a child per model; the child builds the engine, serves the request and exits without a teardown
(the kernel frees its memory while the parent goes on). Against it, parity's worker as it is: build, serve and tear
down in one process. Both through parity's own adapter, bare (no hooks), on tiny Llamas of 1-4 layers.

Prints, per way, the median seconds on the critical path (until the reply) and, for the forked children, the
seconds they took to exit after replying. Cold: the zygote has only imported the engine (no model run, no
intra-op thread pool started) when it forks. Warm: it has built, run and torn down one engine first, as a
worker's first build imports what every build needs.

    PYTHONPATH=. "$(python -m parity env vllm)" benchmarks/zygote.py vllm [--examples 6]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import select
import statistics
import sys
import tempfile
import time

from parity import checkpoint
from parity.worker.contract import RunRequest

HANG = 120.0


def config(layers: int) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 64, "hidden_size": 128, "num_hidden_layers": layers,
            "intermediate_size": 256, "rms_norm_eps": 1e-6, "vocab_size": 256, "tie_word_embeddings": False,
            "max_position_embeddings": 256, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}


def request(ckpt: str, held: bool) -> RunRequest:
    # ``held``: the adapter keeps the engine for a next request instead of tearing it down (the child exits)
    return RunRequest(checkpoint=ckpt, prompts=[[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2]],
                      decode_steps=2, dtype="float32", out="", capture=False, fresh=not held)


def forked(adapter, ckpt: str) -> tuple[float, float] | None:
    """Seconds until the child's reply, then until it has exited; None if it hung (killed)."""
    t0 = time.perf_counter()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            adapter.run(request(ckpt, held=True))
            os.write(w, b"ok")
        finally:
            os._exit(0)
    os.close(w)
    ready, _, _ = select.select([r], [], [], HANG)
    if not ready:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(r)
        return None
    reply = os.read(r, 2)
    t1 = time.perf_counter()
    os.close(r)
    os.waitpid(pid, 0)
    if reply != b"ok":
        raise SystemExit("the forked child failed; see its traceback above")
    return t1 - t0, time.perf_counter() - t1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engine", choices=["vllm", "sglang"])
    parser.add_argument("--examples", type=int, default=6)
    args = parser.parse_args()
    adapter = importlib.import_module(f"parity.adapters.{args.engine}").Adapter()
    gc.freeze()  # as the worker does after the engine import
    tmp = tempfile.mkdtemp(prefix="parity-zygote-")
    ckpts = []
    for i in range(2 * args.examples + 1):  # the same n+1.. checkpoints serve the warm zygote and in-process
        ckpts.append(os.path.join(tmp, str(i)))
        checkpoint.write(config(1 + i % 4), i, ckpts[-1])
    n = args.examples
    cold = [forked(adapter, c) for c in ckpts[:n]]
    adapter.run(request(ckpts[n], held=False))  # the worker's first build imports what builds import
    warm = [forked(adapter, ckpts[n + 1])]  # forked after a model ran here: intra-op threads started
    if warm[0] is not None:
        warm += [forked(adapter, c) for c in ckpts[n + 2:]]
    in_process = []
    for c in ckpts[n + 1:]:
        t0 = time.perf_counter()
        reply = adapter.run(request(c, held=False))
        in_process.append((time.perf_counter() - t0, reply.seconds["teardown"]))
    def median(runs: list) -> float | str:
        return "hung" if None in runs else round(statistics.median(runs), 3)

    print(json.dumps({
        "engine": args.engine, "examples": n,
        **{f"zygote_{name}_{what}": median([z and z[i] for z in runs]) for name, runs in (("cold", cold), ("warm", warm))
           for i, what in enumerate(("reply", "child_exit"))},
        "in_process": median([p[0] for p in in_process]), "in_process_teardown": median([p[1] for p in in_process]),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
