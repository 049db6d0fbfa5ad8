"""The README's census of the architectures transformers, vLLM and SGLang all implement: per model type of the
stored generic table (``parity generic --write``), what a run said for each engine; prints Markdown.

    parity run --tier all --profile nightly --examples 2 --seed 1 --backend vllm --backend sglang --out reports/census
    python benchmarks/census.py reports/census/report.json

Per engine, an architecture is "pass" when every example it ran agreed (max rel. L2 given), "known" when every
other result is a written-up engine issue, "diverged" with the first divergent tensor, "fails to load" or
"error" with the engine's first line, "unsupported" with the reason; "no tiny config" where parity could
not derive one.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from parity import registry  # noqa: E402
from parity import report as report_mod  # noqa: E402


def cell(results: list) -> str:
    """One engine's verdict on one architecture over its examples, worst first."""
    by = defaultdict(list)
    for r in results:
        by["known" if r.known_issue else r.status].append(r)
    for status in ("error", "diverged"):
        if by[status]:
            r = by[status][0]
            if status == "diverged":
                d = r.first_divergence
                return f"diverged at `{d.tensor}` step {d.step} ({d.rel_l2:.1e})"
            reason = (r.reason or "").strip().splitlines()
            return f"error: {reason[0][:120] if reason else '?'}"
    if by["pass"]:
        return f"pass ({max(r.max_rel_l2 for r in by['pass']):.1e})" + (" + known" if by["known"] else "")
    if by["known"]:
        return f"known ({by['known'][0].known_issue})"
    return "unsupported" if by["unsupported"] else "not run"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("report", type=Path)
    args = parser.parse_args()
    report = report_mod.read(args.report)
    results: dict[tuple[str, str], list] = defaultdict(list)
    for ex in report.examples:
        for r in ex.results:
            results[(ex.arch, r.backend)].append(r)
    engines = [b.label for b in report.backends]
    print("| model type | tier | " + " | ".join(engines) + " |")
    print("|---|---|" + "---|" * len(engines))
    for model_type, entry in sorted(registry.generic_table()["entries"].items()):
        tier = ("full" if model_type in registry.registry_model_types()
                else "generic" if model_type in registry.generic_entries() else "none")
        if tier == "full":  # the registry's name for it (GPT-J's gpt_j)
            model_type = next(n for n, s in registry.ARCHITECTURES.items() if s.model_type == model_type)
        if tier == "none":
            cells = [f"no tiny config: {entry.get('error', '?')[:100]}"] * len(engines)
        else:
            cells = [cell(results[(model_type, e)]) for e in engines]
        print(f"| {model_type} | {tier} | " + " | ".join(c.replace("|", "/") for c in cells) + " |")


if __name__ == "__main__":
    main()
