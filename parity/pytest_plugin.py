"""pytest plugin (entry point ``parity``): real engine workers as fixtures.

Options (group ``parity``):
  --parity-backend NAME[@LABEL][=PYTHON]  backends for parity tests (repeatable)
  --parity-profile dev|ci|nightly        search effort
  --parity-device cpu|cuda
  --parity-out DIR                       where sessions write reports

Fixtures:
  parity_config     the options above as one object
  parity_sessions   factory: ``parity_sessions(backends=[...], patches=[...])`` gives a
                    started :class:`parity.session.Session`, shared by every test asking
                    for the same backends and patches, stopped at the end of the run.

Marker ``parity``: the test drives real engines. Engines are never skipped: a
backend whose environment cannot be set up fails the test with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from parity import profiles

PREFIX = "--parity-"


@dataclass
class ParityConfig:
    backends: list[str]
    profile: profiles.Profile
    device: str
    out: Path
    seed: int | None
    archs: list[str] | None
    sessions: dict[tuple, object] = field(default_factory=dict)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("parity", "parity: numerical parity of inference engines")
    group.addoption(f"{PREFIX}backend", action="append", default=None, metavar="NAME[@LABEL][=PYTHON]",
                    help="backend for parity tests (repeatable); =PYTHON uses your own engine environment. "
                         "Default: ['vllm']")
    group.addoption(f"{PREFIX}profile", default=profiles.DEFAULT, choices=list(profiles.PROFILES), metavar="NAME",
                    help="search effort: dev, ci or nightly. Default: %(default)r")
    group.addoption(f"{PREFIX}device", default="cpu", choices=["cpu", "cuda"], metavar="DEVICE",
                    help="device engines run on (cuda is untested on a GPU). Default: %(default)r")
    group.addoption(f"{PREFIX}seed", default=None, type=int, metavar="SEED",
                    help="Hypothesis seed for parity searches. Default: the profile's")
    group.addoption(f"{PREFIX}arch", action="append", default=None, metavar="NAME",
                    help="architectures for parity.pytest_search (repeatable). Default: all")
    group.addoption(f"{PREFIX}out", default=None, metavar="DIR",
                    help="directory for the reports parity tests write. Default: pytest's basetemp")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "parity: drives real engine workers (slow; needs the engine environments)")
    out = config.getoption(f"{PREFIX}out")
    profile = profiles.get(config.getoption(f"{PREFIX}profile"))
    config.stash[_KEY] = ParityConfig(
        backends=config.getoption(f"{PREFIX}backend") or ["vllm"],
        profile=profile,
        device=config.getoption(f"{PREFIX}device"),
        out=Path(out) if out else Path(config.rootpath) / ".parity" / "pytest",
        seed=config.getoption(f"{PREFIX}seed") if config.getoption(f"{PREFIX}seed") is not None else profile.seed(),
        archs=config.getoption(f"{PREFIX}arch"),
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On the controller, merge what every process wrote for one backend set into ``<out>/<backends>/``."""
    config = session.config
    state = config.stash.get(_KEY, None)
    if state is None or hasattr(config, "workerinput"):
        return
    for s in state.sessions.values():  # workers of this process first, so their reports are final
        s.close()
    state.sessions.clear()
    # Deferred, like the session's imports below: pytest loads this plugin in every test session
    # of any project that has parity installed, most of which never use parity.
    from parity import report as report_mod
    from parity.summary import merge

    groups: dict[str, list[Path]] = {}
    for part in sorted(state.out.glob("*/*/report.json")):  # <out>/<xdist worker>/<backends>/report.json
        groups.setdefault(part.parent.name, []).append(part)
    for name, parts in groups.items():
        merged = merge([report_mod.read(p) for p in parts], command="pytest (parity plugin, merged)")
        report_mod.write(merged, state.out / name)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_KEY, None)
    if state is not None:
        for session in state.sessions.values():
            session.close()
        state.sessions.clear()


_KEY = pytest.StashKey[ParityConfig]()


@pytest.fixture(scope="session")
def parity_config(pytestconfig: pytest.Config) -> ParityConfig:
    return pytestconfig.stash[_KEY]


@pytest.fixture(scope="session")
def parity_sessions(parity_config: ParityConfig, pytestconfig: pytest.Config) -> Iterator[Callable[..., object]]:
    from parity.backends import parse_backends
    from parity.session import HarnessError, RunConfig, Session

    # One worker pool per xdist worker.
    worker_id = getattr(pytestconfig, "workerinput", {}).get("workerid", "master")

    def get(backends: list[str] | None = None, patches: list[str] | None = None, dtype: str = "float32",
            timeout: float = 300.0):
        backends = backends or parity_config.backends
        key = (tuple(backends), tuple(patches or ()), dtype, timeout)
        if key not in parity_config.sessions:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(backends + [Path(p.split("=", 1)[1]).stem for p in patches or []]))
            cfg = RunConfig(backends=parse_backends(backends, patches or []), device=parity_config.device,
                            dtype=dtype, timeout=timeout, out=parity_config.out / worker_id / name,
                            profile=parity_config.profile.name, keep_activations=True,  # tests read them
                            command=f"pytest (parity plugin) backends={backends} patches={patches or []}")
            try:
                parity_config.sessions[key] = Session(cfg).__enter__()
            except HarnessError as exc:
                pytest.fail(f"parity could not start {backends} (set {PREFIX}backend NAME=PYTHON to use your own "
                            f"environment): {exc}", pytrace=False)
        return parity_config.sessions[key]

    yield get

