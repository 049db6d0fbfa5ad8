"""The README's bug-zoo detection table: every fixture of fixtures/zoo.py searched from
scratch against its patched engine, as tests/test_bug_zoo.py does; prints Markdown.

"Found after" counts the examples the search generated up to the first failing one,
and their seconds (checkpoint, reference and engine, as the session timed them);
"Search" is the whole search, shrinking included, without worker start-up.
Checkpoints and Hypothesis' example database go to a fresh directory, so nothing is
replayed from earlier runs; engine environments are reused.

    python benchmarks/zoo_table.py [--dtype bfloat16] [--only s1_vllm_rotary_dim_halved_per_layer ...]

"x band" is the first divergence's relative L2 over its band: how far the bug leaves the
noise floor at that dtype; for a bug not caught, the largest of any tensor the search compared.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # fixtures/ is not an installed package

from fixtures.zoo import FIXTURES, Fixture  # noqa: E402
from parity import envs  # noqa: E402
from parity.backends import parse_backends  # noqa: E402
from parity.example import Example  # noqa: E402
from parity.profiles import get  # noqa: E402
from parity.search import search  # noqa: E402
from parity.session import RunConfig, Session  # noqa: E402


SEED = 0  # as tests/test_bug_zoo.py


def row(fixture: Fixture, out: Path, dtype: str) -> str:
    profile = get(fixture.profile)
    cfg = RunConfig(backends=parse_backends([fixture.backend], [f"{fixture.backend}={fixture.path}"]),
                    out=out / fixture.id, profile=profile.name, seed=SEED, dtype=dtype,
                    command="benchmarks/zoo_table.py")
    with Session(cfg) as session:
        t0 = time.monotonic()
        minimal = search(session, fixture.arch, profile, SEED)
        searched = time.monotonic() - t0
        records = list(session.records.values())
    patch = f"[`{fixture.id}`](fixtures/patches/{fixture.path.name})"
    if minimal is None:  # how close it came: the largest error over band of any tensor the search compared
        closest = max((r.rel_l2 / r.band for ex in records for res in ex.results for r in res.rows
                       if r.verdict != "skipped"), default=float("nan"))
        return (f"| {fixture.bug} | {fixture.backend} | {patch} | **no** | | | {closest:.2f}x (largest) | "
                f"{len(records)} examples | | {searched:.0f} s |")
    generated = [r for r in records if r.role == "generated"]
    found = next(i for i, r in enumerate(generated, 1) if r.failed)
    seconds = sum(r.seconds.get("total", 0.0) for r in generated[:found])
    record = session.records[minimal]
    (result,) = [r for r in record.results if r.backend == fixture.backend]
    d = result.first_divergence
    where = f"`{d.tensor}` (rel L2 {d.rel_l2:.1e})" if d else result.status
    band = f"{d.rel_l2 / d.band:.0f}x" if d else ""
    modes = Example.from_json(record.model_dump()).execution.modes()
    expected = result.status == fixture.status and d is not None and d.kind in fixture.kinds \
        and d.layer == fixture.layer and fixture.minimal(record.config) \
        and len(modes) == (1 if fixture.execution else 0) and set(modes) <= set(fixture.execution)
    return (f"| {fixture.bug} | {fixture.backend} | {patch} | yes | {'yes' if expected else '**no**'} | {where} | {band} "
            f"| {record.description} | {found} ex, {seconds:.0f} s | {searched:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="fixture ids (patch file stems)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()
    chosen = [f for f in FIXTURES if args.only is None or f.id in args.only]
    with tempfile.TemporaryDirectory(prefix="parity-zoo-") as tmp:
        cache = Path(tmp) / "cache"
        cache.mkdir()
        (cache / "envs").symlink_to(envs.cache_dir() / "envs", target_is_directory=True)
        os.environ["PARITY_CACHE_DIR"] = str(cache)
        rows = [row(f, Path(tmp) / "out", args.dtype) for f in chosen]
    print("Profiles " + ", ".join(f"`{p.name}` ({p.max_examples} examples, shrink budget {p.shrink_seconds:.0f} s)"
                                  for p in sorted({get(f.profile) for f in chosen}, key=lambda p: p.name))
          + f", seed {SEED}, CPU, {args.dtype}. As expected: first divergence and minimal config as fixtures/zoo.py "
          f"states.\n")
    print("| bug | engine | patch | caught | as expected | first divergence | x band | minimal config | found after "
          "| search |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
