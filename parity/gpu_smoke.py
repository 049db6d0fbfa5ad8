"""GPU smoke check of the reference path: transformers on CUDA, judged against the CPU.

``python -m parity.gpu_smoke --python PYTHON`` starts two reference workers on one
interpreter that has torch and transformers (no engine wheel needed): one on the CPU,
which writes each checkpoint and runs it in fp64 and at every dtype under test (the
noise floors), and one on CUDA. The CUDA worker's captures are judged exactly like an
engine's (:func:`parity.judge.judge`): against the fp64 truth, each tensor within
``parity.tolerance.FLOOR_FACTOR`` times the CPU reference's own error at that dtype,
every decode step compared (along the CUDA run's own greedy tokens, the reference
teacher-forced along them, where they part from fp64's). It checks that the capture
path (hooks, key set, token routing, transfer off the device) works on CUDA and that
the noise-floor bands measured on the CPU hold for GPU kernels. Not part of CI: there
is no GPU there.

Exit 0 when every CUDA capture is within its bands, 1 when one is not, 2 on a setup
error. ``--device cpu`` runs the same path with both workers on the CPU (the test
suite uses it to keep this script working on machines without a GPU).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from safetensors.numpy import load_file

from parity import compare, judge, registry
from parity import envs
from parity.backends import BACKENDS, BackendSpec
from parity.example import Example
from parity.pool import Worker, WorkerError
from parity.session import routers
from parity.strategies import ExecutionSurface, sample
from parity.worker.contract import CheckpointRequest, RunRequest

TIMEOUT = 300.0
GPU = "cuda"
"""The judged worker's label in the judgement (whatever ``--device`` it runs on)."""


def check(example: Example, cpu: Worker, gpu: Worker, dtypes: list[str], work: Path) -> list[str]:
    """One example at every dtype; returns one line per dtype, starting with PASS or FAIL.

    Judged as parity's session judges an engine (:func:`parity.judge.judge`): every decode step is compared,
    along the CUDA run's own greedy tokens where they part from fp64's (the reference teacher-forced along
    them), and every floor comes from a CPU run fed the same tokens as the truth it is measured against.
    """
    ckpt = work / example.checkpoint_id
    cpu.call(CheckpointRequest(config=example.config, seed=example.weight_seed, dir=str(ckpt)), TIMEOUT)
    out = work / example.id
    out.mkdir()
    prompts = len(example.prompts)

    def run(worker: Worker, dtype: str, name: str, forced: compare.Trajectory = ()) -> compare.Tensors:
        request = RunRequest(checkpoint=str(ckpt), prompts=[list(p) for p in example.prompts],
                             decode_steps=example.decode_steps, dtype=dtype, out=str(out / name),
                             modules=asdict(registry.get(example.arch).modules), forced=[list(t) for t in forced])
        return load_file(worker.call(request, TIMEOUT).file)

    exact = run(cpu, "float64", "cpu-float64")
    tokens = compare.decode_tokens(exact, prompts, example.decode_steps)
    routing = routers(ckpt, example.config)
    lines = []
    for dtype in dtypes:
        def along(trajectory: compare.Trajectory, name: str) -> judge.Reference:
            # The CPU at ``dtype`` is always fed fp64's tokens: a near-tie that parts its own greedy run from
            # fp64's would leave the later steps without a floor.
            truth = exact if trajectory == tokens else run(cpu, "float64", f"cpu-float64-{name}", trajectory)
            low = run(cpu, dtype, f"cpu-{dtype}-{name}", trajectory)
            return judge.Reference(truth, compare.floors(low, truth), trajectory)

        reference = along(tokens, "greedy")
        t0 = time.monotonic()
        captured = run(gpu, dtype, f"gpu-{dtype}")
        seconds = time.monotonic() - t0
        forced = {GPU: along(own, "along-gpu") for own in judge.parted(
            tokens, {GPU: captured}, prompts, example.decode_steps, example.config["vocab_size"]).values()}
        (outcome,) = judge.judge(judge.Captures(reference, {GPU: captured}, forced, routing), dtype)
        result = outcome.result
        if result.status == "error":
            lines.append(f"FAIL {dtype}: {result.reason}")
            continue
        judged = [r for r in result.rows if r.verdict != "skipped"]
        worst = max(judged, key=lambda r: r.rel_l2 / r.band)
        first = result.first_divergence
        where = f" first divergence {first.tensor} step {first.step} rel. L2 {first.rel_l2:.2e} > band " \
                f"{first.band:.2e}" if first else ""
        skipped = f", {len(result.rows) - len(judged)} rows skipped" if len(judged) < len(result.rows) else ""
        trajectory = "its own tokens" if forced else "fp64's tokens"
        lines.append(f"{'FAIL' if first else 'PASS'} {dtype}: {len(judged)} tensors, max rel. L2 "
                     f"{result.max_rel_l2:.2e} (CPU reference's own {max(r.floor for r in judged):.2e}), worst "
                     f"{worst.rel_l2 / worst.band:.2f} of its band at {worst.tensor}; decode along "
                     f"{trajectory}; forward {seconds:.2f}s{skipped}{where}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parity.gpu_smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", help="interpreter with torch and transformers for both workers "
                                         "(default: parity's managed transformers environment for the device)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="where the judged worker runs. Default: %(default)r")
    parser.add_argument("--dtype", action="append", choices=["float32", "bfloat16", "float16"],
                        help="dtypes to judge (repeatable). Default: float32 and bfloat16")
    parser.add_argument("--arch", action="append", help="architectures. Default: every registry entry")
    parser.add_argument("--examples", type=int, default=2, help="examples per architecture. Default: %(default)r")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed of the drawn examples. Default: %(default)r")
    parser.add_argument("--out", type=Path, help="keep checkpoints, captures and worker logs here")
    args = parser.parse_args(argv)
    dtypes = args.dtype or ["float32", "bfloat16"]
    archs = args.arch or list(registry.ARCHITECTURES)
    try:
        for arch in archs:
            registry.get(arch)
        python = args.python or str(envs.ensure(BACKENDS["transformers"], args.device))
    except (registry.UnknownArchitecture, envs.EnvBuildError) as exc:
        print(f"gpu_smoke: error: {exc}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="parity-gpu-smoke-") as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        workers = [Worker(BackendSpec("transformers", label), python, device, work / "logs", work)
                   for label, device in (("reference", "cpu"), (f"judged-{args.device}", args.device))]
        failed = 0
        try:
            for w in workers:
                print(f"{w.label} worker: {w.start().versions_text}", flush=True)
            for arch in archs:
                # The reference serves every way of running alike: no execution mode is drawn.
                for example in sample(arch, args.examples, args.seed, decode_steps=2, execution=ExecutionSurface(modes=())):
                    for line in check(example, *workers, dtypes, work):
                        failed += line.startswith("FAIL")
                        print(f"{example.describe()}: {line}", flush=True)
        except WorkerError as exc:
            print(f"gpu_smoke: error: {exc}", file=sys.stderr)
            return 2
        finally:
            for w in workers:
                w.stop()
    print(f"gpu_smoke: {failed} failing example/dtype pairs", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
