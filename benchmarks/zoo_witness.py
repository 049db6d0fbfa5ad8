"""The bug zoo at another dtype: each fixture of fixtures/zoo.py on its plainest witness (the
simplest example its ``minimal`` predicate accepts, as Hypothesis shrinks towards it), with its
patch at float32 and at ``--dtype``, and without it at ``--dtype``; prints Markdown.

Where ``benchmarks/zoo_table.py`` asks whether a search finds each bug, this asks how far each
bug leaves its band once it runs ("x band": the first divergence's relative L2 over its band;
for a result that passes, the largest of any compared tensor).

    python benchmarks/zoo_witness.py [--dtype bfloat16] [--backend sglang]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from hypothesis import find, settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # fixtures/ is not an installed package

from fixtures.zoo import FIXTURES, Fixture  # noqa: E402
from parity import registry  # noqa: E402
from parity.backends import parse_backends  # noqa: E402
from parity.example import Example  # noqa: E402
from parity.records import BackendResult  # noqa: E402
from parity.session import RunConfig, Session  # noqa: E402
from parity.strategies import examples  # noqa: E402


def witness(fixture: Fixture) -> Example:
    spec = registry.get(fixture.arch)
    strategy = examples(fixture.arch, spec, spec.head_dims, decode_steps=2)
    return find(strategy, lambda ex: fixture.minimal(ex.config), settings=settings(database=None, max_examples=2000))


def judged(result: BackendResult) -> str:
    d = result.first_divergence
    if d:
        return f"`{d.tensor}` {d.rel_l2:.1e}, {d.rel_l2 / d.band:.3g}x"
    worst = max(r.rel_l2 / r.band for r in result.rows if r.verdict != "skipped")
    return f"{result.status}, {worst:.2f}x"


def evaluate(backend: str, patches: list[str], dtype: str, chosen: list[Example], out: Path) -> list[str]:
    cfg = RunConfig(backends=parse_backends([backend], patches), dtype=dtype, out=out,
                    command="benchmarks/zoo_witness.py")
    with Session(cfg, log=lambda m: None) as session:
        return [judged(session.evaluate(ex).results[0]) for ex in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--backend", default="sglang", help="the fixtures of this engine")
    args = parser.parse_args()
    fixtures = [f for f in FIXTURES if f.backend == args.backend]
    witnesses = [witness(f) for f in fixtures]
    with tempfile.TemporaryDirectory(prefix="parity-witness-") as tmp:
        patched = [[evaluate(f.backend, [f"{f.backend}={f.path}"], dtype, [ex], Path(tmp) / f"{f.id}-{dtype}")[0]
                    for dtype in ("float32", args.dtype)] for f, ex in zip(fixtures, witnesses)]
        clean = evaluate(args.backend, [], args.dtype, witnesses, Path(tmp) / "clean")
    print(f"| bug | witness | float32 patched | {args.dtype} patched | {args.dtype} unpatched |")
    print("|---|---|---|---|---|")
    for f, ex, cells, unpatched in zip(fixtures, witnesses, patched, clean):
        print(f"| {f.bug} | {ex.describe()} | {' | '.join(cells)} | {unpatched} |")


if __name__ == "__main__":
    main()
