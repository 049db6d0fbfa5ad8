"""Reports built without engines: canonical activations with chosen errors, judged by the real comparator."""

from __future__ import annotations

import numpy as np

from parity import compare, schema
from parity.records import BackendInfo, BackendResult, ExampleRecord, Report
from parity.summary import summarize

FLOOR = 1e-7
DTYPE = "float32"


def activations(layers: int = 2, tokens: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {schema.key(0, 0, schema.TOKEN_IDS): np.arange(tokens)}
    names = ["embed", *(schema.layer_name(i, k) for i in range(layers) for k in schema.LAYER_KINDS), "final_norm"]
    for n in names:
        out[schema.key(0, 0, n)] = rng.standard_normal((tokens, 8))
    return out


def result(backend: str, errors: dict[str, float] | None = None, layers: int = 2, tokens: int = 3) -> BackendResult:
    """A backend whose tensor ``name`` has relative L2 error ``errors[name]`` (NaN: a non-finite candidate)."""
    ref = activations(layers, tokens)
    cand = dict(ref)
    for name, err in (errors or {}).items():
        k = schema.key(0, 0, name)
        cand[k] = np.full_like(ref[k], np.nan) if np.isnan(err) else ref[k] * (1 + err)
    floors = {k: FLOOR for k in ref if not k.endswith(schema.TOKEN_IDS)}
    rows, first, notes = compare.compare(cand, ref, floors, DTYPE)
    return BackendResult(backend=backend, status="diverged" if first else "pass", first_divergence=first,
                         max_rel_l2=max(r.rel_l2 for r in rows), notes=notes, rows=rows)


def error(backend: str, reason: str = "EngineError: boom\ntraceback line") -> BackendResult:
    return BackendResult(backend=backend, status="error", reason=reason)


def example(ex_id: str, *results: BackendResult, description: str | None = None, role: str = "generated",
            minimal: bool = False) -> ExampleRecord:
    return ExampleRecord(
        id=ex_id, arch="llama", role=role, minimal=minimal, description=description or f"llama(example {ex_id})",
        config={"num_hidden_layers": 2}, weight_seed=0, prompts=[[0, 1, 2]], decode_steps=0,
        replay=f"parity replay reports/latest/report.json {ex_id}", results=list(results),
    )


def report(*examples: ExampleRecord, **fields) -> Report:
    info = BackendInfo(label="reference", engine="transformers", python="/usr/bin/python3",
                       versions={"transformers": "5.19.0"})
    labels = list(dict.fromkeys(r.backend for ex in examples for r in ex.results if "~" not in r.backend))
    backends = [BackendInfo(label=b, engine="vllm", python="/usr/bin/python3", versions={"vllm": "0.32.0"})
                for b in labels]
    base = dict(parity_version="0.1.0", created="2026-01-01T00:00:00+00:00", command="parity run", profile="dev",
                seed=None, device="cpu", dtype=DTYPE, complete=True, reference=info, backends=backends,
                examples=list(examples), summary=summarize(list(examples)))
    return Report(**{**base, **fields})
