"""Run profiles: how hard to search. Registered as Hypothesis settings profiles
(``parity-dev``, ``parity-ci``, ``parity-nightly``) plus parity's own knobs.

``dev`` is a quick look, ``ci`` gates a change, ``nightly`` searches wide.
Choose with ``--profile`` or the ``PARITY_PROFILE`` environment variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from parity.strategies import ExecutionSurface, PromptSurface


@dataclass(frozen=True)
class Profile:
    name: str
    max_examples: int
    """Examples generated per architecture (shrinking comes on top)."""

    shrink_seconds: float
    """Wall-clock budget for shrinking one failure; engines are slow, shrinking is not free."""

    decode_steps: int = 2
    rotates: bool = False
    """Without --seed, the seed is the UTC date: the same examples all day (a gate's two runs match, a failure
    replays), other examples the next day, so a few examples per family still spread over the config surface
    from run to run. The report records the seed. Otherwise a fresh random seed per run."""

    def seed(self, today: date | None = None) -> int | None:
        """The seed of a run given no --seed: ``20261126`` on 26 November 2026 for a rotating profile."""
        if not self.rotates:
            return None
        day = today or datetime.now(timezone.utc).date()
        return int(day.strftime("%Y%m%d"))

    execution: ExecutionSurface = ExecutionSurface()
    """Which execution modes are drawn, and how often."""

    prompts: PromptSurface = PromptSurface()
    """How many prompts each example serves, and how long. More prompts cost next to nothing per engine build
    (benchmarks/bench.py: 8 prompts against 2, README "Speed"); the bug zoo's profiles keep the fewer prompts
    their fixtures' seeds were chosen with."""


PROFILES = {
    # A mode added to a profile's draws moves every later example of a seed, and the engine tests pin dev's
    # seeds (tests/test_vllm.py, test_sglang.py, test_generic.py, test_pr.py, test_replay.py): dev draws the
    # modes they were written against; joining a running batch, newer, is drawn in ci and nightly.
    "dev": Profile("dev", max_examples=3, shrink_seconds=60,
                   execution=ExecutionSurface(modes=("tensor_parallel", "chunked_prefill", "prefix_cache", "kv_block"))),
    "ci": Profile("ci", max_examples=8, shrink_seconds=240, rotates=True, prompts=PromptSurface(count=8)),
    "nightly": Profile("nightly", max_examples=120, shrink_seconds=900, decode_steps=4,
                       prompts=PromptSurface(count=8, tokens=59)),
    # The bug zoo (tests/test_bug_zoo.py): bugs that need 2+ layers and a partial rotary
    # factor must be generated, not just hoped for, and shrunk to their minimal witness;
    # S1 on vLLM reaches 2 layers after ~75 s of shrinking on 2 cores. About one draw in
    # five meets S1 (2+ layers, half the head rotated or less, no known issue in the way);
    # the search stops at the first failure, so the 20 cost only when a fixture is missed.
    # Bugs of the plainest run: no execution mode drawn.
    "zoo": Profile("zoo", max_examples=20, shrink_seconds=150, execution=ExecutionSurface(modes=())),
    # Bugs of execution modes: only those modes drawn, each as often as the plainest run, so ten
    # examples meet them; shrinking still ends at one mode. Two-rank examples take ~20 s each. C1
    # shrinks to one layer in ~200 s on 2 idle cores, and ran out of a 240 s budget at 3 layers on
    # cores shared with other engine runs: the budget caps a shrink, it does not lengthen one.
    "zoo-tp": Profile("zoo-tp", max_examples=10, shrink_seconds=480,
                      execution=ExecutionSurface(modes=("tensor_parallel",), one_rank_share=1)),
    "zoo-prefill": Profile("zoo-prefill", max_examples=10, shrink_seconds=480,
                           execution=ExecutionSurface(modes=("chunked_prefill", "prefix_cache"), plain_share=1)),
    # Joining needs two prompts: up to four are drawn, and twenty examples, as one draw in four or so joins clear
    # of the known issues that llama's random knobs meet.
    "zoo-join": Profile("zoo-join", max_examples=20, shrink_seconds=480, prompts=PromptSurface(count=4),
                        execution=ExecutionSurface(modes=("join_running",), plain_share=1)),
}
DEFAULT = os.environ.get("PARITY_PROFILE", "ci")


def get(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None


def hypothesis_settings(profile: Profile, database_dir: Path) -> settings:
    name = f"parity-{profile.name}"
    settings.register_profile(
        name,
        max_examples=profile.max_examples,
        deadline=None,  # engine start-up dominates and varies: time is budgeted by shrink_seconds
        database=DirectoryBasedExampleDatabase(str(database_dir)),
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        report_multiple_bugs=False,
        print_blob=True,
    )
    return settings.get_profile(name)
