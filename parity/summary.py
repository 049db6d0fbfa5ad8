"""What a report's examples add up to: status counts, known engine issues, coverage, and
the merge of partial reports. Built on the records only, so every writer and reader
of a report can use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parity.records import BackendInfo, ExampleRecord, Report, Summary
from parity.registry import canonical_config, kv_heads, lookup, rope_sets


def _count(table: dict[str, dict[str, int]], outer: str, inner: str) -> None:
    counts = table.setdefault(outer, {})
    counts[inner] = counts.get(inner, 0) + 1


def summarize(examples: list[ExampleRecord]) -> Summary:
    by_backend: dict[str, dict[str, int]] = {}
    by_arch: dict[str, dict[str, int]] = {}
    known_by_backend: dict[str, dict[str, int]] = {}
    known_by_arch: dict[str, dict[str, int]] = {}
    max_rel: dict[str, float] = {}
    for ex in examples:
        for r in ex.results:
            _count(by_backend, r.backend, r.status)
            _count(by_arch, ex.arch, r.status)
            if r.known_issue:
                _count(known_by_backend, r.backend, r.status)
                _count(known_by_arch, ex.arch, r.status)
            if r.status == "pass" and r.max_rel_l2 is not None:
                max_rel[r.backend] = max(max_rel.get(r.backend, 0.0), r.max_rel_l2)
    return Summary(examples=len(examples), by_backend=by_backend, by_arch=by_arch, max_rel_l2=max_rel,
                   failing=[ex.id for ex in examples if ex.failed], coverage=coverage(examples),
                   known_by_backend=known_by_backend, known_by_arch=known_by_arch)


def _knobs(ex: ExampleRecord) -> dict[str, Any]:
    c = canonical_config(ex.arch, ex.config)
    sets = list(rope_sets(c).values())
    rope = sets[0] if sets else {}  # the first layer type's, for a family with RoPE per layer type
    heads = c.get("num_attention_heads")
    kv = kv_heads(c) if heads else None
    head_dim = c.get("head_dim") or (c["hidden_size"] // heads if heads and "hidden_size" in c else None)
    spec = lookup(ex.arch)
    return {
        "layers": c.get("num_hidden_layers"), "head_dim": head_dim,
        "gqa_group": heads // kv if heads and kv else None,
        "head_dim_decoupled": head_dim * heads != c["hidden_size"] if head_dim and heads and "hidden_size" in c else None,
        "partial_rotary_factor": rope.get("partial_rotary_factor", 1.0), "rope_type": "/".join(r.get("rope_type", "default") for r in sets) or "default",
        "rope_theta": rope.get("rope_theta"), "rope_original_context": rope.get("original_max_position_embeddings"),
        "rms_norm_eps": c.get("rms_norm_eps"), "tie_word_embeddings": c.get("tie_word_embeddings"),
        "vocab_size": c.get("vocab_size"), "prompts": len(ex.prompts), "decode_steps": ex.decode_steps,
        **{k: c.get(k) for k in (spec.family_knobs if spec else ())},
    }


def coverage(examples: list[ExampleRecord]) -> dict[str, dict[str, dict[str, int]]]:
    """Which knob values the examples exercised, per architecture (knobs a family lacks are left out)."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for ex in examples:
        for knob, value in _knobs(ex).items():
            if value is not None:
                _count(out.setdefault(ex.arch, {}), knob, str(value))
    return out


def _setting(report: Report) -> dict[str, Any]:
    """What two reports must share to be parts of one run: the same examples are judged by the same
    engines and reference in the same way. Interpreter paths may differ (shards run on separate machines)."""
    def engine(b: BackendInfo) -> tuple:
        return b.engine, b.versions, [Path(p).name for p in b.patches]

    return {"device": report.device, "dtype": report.dtype, "profile": report.profile, "seed": report.seed,
            "reference": engine(report.reference), "backends": {b.label: engine(b) for b in report.backends}}


def merge(reports: list[Report], command: str) -> Report:
    """One report from partial reports of one run: split over processes (pytest-xdist) or over
    machines (CI shards, each a subset of the architectures). Refuses parts that are not comparable."""
    if not reports:
        raise ValueError("nothing to merge")
    first = reports[0]
    want = _setting(first)
    for i, r in enumerate(reports[1:], start=2):
        got = _setting(r)
        differ = [f"{k} {want[k]!r} vs {got[k]!r}" for k in want if want[k] != got[k]]
        if differ:
            raise ValueError(f"cannot merge report 1 and report {i}: different " + "; ".join(differ))
    examples = {ex.id: ex for r in reports for ex in r.examples}
    ordered = sorted(examples.values(), key=lambda ex: (ex.arch, ex.id))
    return first.model_copy(update={
        "command": command, "examples": ordered, "summary": summarize(ordered),
        "complete": all(r.complete for r in reports),
        "surface": {arch: cov for r in reports for arch, cov in r.surface.items()},
    })
