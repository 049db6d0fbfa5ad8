"""``parity repro``: one example of a report as a self-contained folder a maintainer can run
without parity, to attach to an upstream issue.

The folder holds the model config (config.json), the example (example.json: weight seed,
prompts, dtype, where the decoder layers are, what parity reported), parity's
checkpoint recipe and band rule copied unchanged (checkpoint.py, tolerance.py), the
engine's parity-free runner copied unchanged (engine.py, from ``BackendDef.runner``) and
two scripts (make_checkpoint.py, run.py from ``parity/repro_bundle``). run.py compares
less than parity does (the residual stream after each layer and the last token's logits,
prefill only) but needs nothing beyond the engine's own environment.

Runs on the orchestrator side: reads files as text, imports no torch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from parity import registry
from parity.backends import get
from parity.records import BackendResult, ExampleRecord, Report

_PARITY = Path(__file__).resolve().parent
_SCRIPTS = ("make_checkpoint.py", "run.py")


def write(report: Report, example_id: str, label: str, out: Path) -> Path:
    """Write the bundle for ``example_id`` on backend ``label`` into ``out``; return ``out``."""
    example = _example(report, example_id)
    info = next((b for b in report.backends if b.label == label), None)
    if info is None:
        raise ValueError(f"no backend labelled {label!r} in this report; it ran "
                         + ", ".join(b.label for b in report.backends))
    runner = get(info.engine).runner
    if runner is None:
        raise ValueError(f"backend {label!r} ({info.engine}) has no parity-free runner to bundle")
    spec = registry.get(example.arch)
    result = next((r for r in example.results if r.backend == label), None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(example.config, indent=1))
    (out / "example.json").write_text(json.dumps({
        "engine": info.engine, "versions": info.versions, "reference": report.reference.versions,
        "description": example.description, "arch": example.arch, "weight_seed": example.weight_seed,
        "prompts": example.prompts, "dtype": report.dtype, "device": report.device,
        "layers": f"{spec.modules.decoder}.{spec.modules.layers}",
        "parity_example": example.id, "parity_reported": _reported(result),
    }, indent=1))
    shutil.copyfile(_PARITY / "checkpoint.py", out / "checkpoint.py")
    shutil.copyfile(_PARITY / "tolerance.py", out / "tolerance.py")
    shutil.copyfile(_PARITY / "adapters" / f"{runner}.py", out / "engine.py")
    for name in _SCRIPTS:
        shutil.copyfile(_PARITY / "repro_bundle" / name, out / name)
    (out / "README.md").write_text(_readme(example, info.engine, info.versions, _reported(result)))
    return out


def _example(report: Report, example_id: str) -> ExampleRecord:
    match = [e for e in report.examples if e.id == example_id]
    if not match:
        raise ValueError(f"no example {example_id!r} in the report; it holds "
                         + ", ".join(e.id for e in report.examples[:10]))
    return match[0]


def _reported(result: BackendResult | None) -> str:
    if result is None:
        return "this backend has no result for the example"
    d = result.first_divergence
    text = result.status + (f" at {d.tensor} (step {d.step}, prompt {d.prompt}, rel. L2 {d.rel_l2:.2e})" if d else "")
    if result.reason:
        text += f": {result.reason.splitlines()[0]}"
    return text + (f" [known issue: {result.known_issue}]" if result.known_issue else "")


def _readme(example: ExampleRecord, engine: str, versions: dict[str, str], reported: str) -> str:
    return f"""# {engine} vs transformers: {example.description}

A tiny random-weight model on which {engine} {versions.get(engine, '')} departs from transformers
{versions.get('transformers', '')}. parity reported: {reported}.

Run it in an environment with {engine} installed (it brings torch, transformers and safetensors):

    python run.py

run.py rebuilds the checkpoint into ./checkpoint (make_checkpoint.py: the seed in example.json,
the model config in config.json), runs each prompt's prefill through transformers in float64 and
in {{dtype}} and through {engine}, and prints the relative L2 error of the residual stream after
every decoder layer and of the last token's logits against float64, with the first tensor whose
error exceeds 10x transformers' own error at that dtype. Exit code 1: {engine} diverges.

engine.py drives {engine} in-process (no server); checkpoint.py and tolerance.py are the harness's
own recipe and band rule, copied unchanged.
""".replace("{dtype}", "the dtype under test")
