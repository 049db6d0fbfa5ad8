"""The Hypothesis glue: a search per architecture over generated examples, each judged
by a :class:`~parity.session.Session`; a failure makes Hypothesis shrink it towards
the plainest model that still fails, which is marked minimal in the report.
"""

from __future__ import annotations

import time
from typing import Callable
from dataclasses import replace

from hypothesis import given
from hypothesis import seed as hypothesis_seed

from parity import interrupts, registry, support
from parity.example import Example
from parity.profiles import Profile, hypothesis_settings
from parity.records import Report
from parity.session import HarnessError, Launch, RunConfig, Session
from parity.strategies import examples as example_strategy
from parity.strategies import seed_only, supported_head_dims


class _Failed(Exception):
    """Raised inside the Hypothesis test so it shrinks towards a smaller failing example."""

    def __init__(self, example_id: str):
        super().__init__(example_id)
        self.example_id = example_id


class _Stopped(BaseException):
    """Carries an error that stops the run (a reference that failed, a full disk) out of the Hypothesis test at
    once: Hypothesis takes an ``Exception`` for a failing example, and would replay and shrink it."""

    def __init__(self, error: Exception):
        super().__init__(error)
        self.error = error


class _Unsupported(Exception):
    """Stops the search at the first example when no backend can run the architecture."""


def search(session: Session, arch: str, profile: Profile, seed: int | None) -> str | None:
    """Search one architecture; return the id of the minimal failing example, if any."""
    spec = registry.get(arch)
    if profile.name == "ci" and spec.ci_examples is not None:
        profile = replace(profile, max_examples=min(profile.max_examples, spec.ci_examples))
    session.log(f"parity: searching {arch} ({profile.name} profile, {profile.max_examples} examples)")
    runnable = [w for w in session.engines if support.supports(w.capabilities, arch, dtype=session.cfg.dtype) is None]
    if not runnable:
        session.log(f"parity: {arch}: no selected backend supports it; recording one example as unsupported")
    head_dims = supported_head_dims(spec, [w.capabilities.head_sizes for w in runnable])
    if not head_dims:
        raise HarnessError(f"{arch}: none of its head sizes {spec.head_dims} is supported by "
                           + ", ".join(f"{w.label} ({w.capabilities.head_sizes})" for w in runnable))
    # No example is spent on a way of running that no selected backend can run (SGLang's adapter runs one rank only).
    modes = tuple(m for m in profile.execution.modes
                  if any(m not in w.capabilities.unsupported_execution for w in runnable))
    strategy = example_strategy(arch, spec, head_dims, profile.decode_steps, replace(profile.execution, modes=modes),
                                profile.prompts)
    session.surface_coverage([arch])  # before the search's own Hypothesis test, where sampling is refused
    shrink_deadline: list[float] = []

    def check(example: Example) -> None:
        record = session.known(example)
        if record is None:
            if shrink_deadline and time.monotonic() > shrink_deadline[0]:
                return  # shrink budget spent: treat untried examples as not failing
            try:
                record = session.evaluate(example, role="shrink" if shrink_deadline else "generated")
            except Exception as exc:
                raise _Stopped(exc) from exc
        if record.failed:
            if not shrink_deadline:
                shrink_deadline.append(time.monotonic() + profile.shrink_seconds)
            raise _Failed(record.id)
        if not runnable:
            raise _Unsupported()

    test = given(strategy)(check)
    test = hypothesis_settings(profile, session.cache / "examples")(test)
    if seed is not None:
        test = hypothesis_seed(seed)(test)
    # One example-database key per architecture and backend set (patches and overlays included), so replays
    # stay apart.
    test._hypothesis_internal_add_digest = "|".join(
        [arch] + [f"{w.label}:{','.join(w.spec.patches)}" + (f"+{w.spec.overlay}" if w.spec.overlay else "")
                  for w in session.engines]).encode()
    try:
        with seed_only():
            test()
    except _Failed as failure:
        session.mark_minimal(failure.example_id)
        return failure.example_id
    except _Unsupported:
        pass
    except _Stopped as stopped:
        raise stopped.error from None
    return None


def run(cfg: RunConfig, archs: list[str] | Callable[[Session], list[str]], profile: Profile,
        launch: Launch | None = None) -> Report:
    """``parity run``: search every architecture; the report is complete unless interrupted. ``archs`` may be
    chosen once the workers have started, from what they say (``parity pr`` asks the engine)."""
    with Session(cfg, launch=launch) as session:
        try:
            for arch in archs(session) if callable(archs) else archs:
                minimal = search(session, arch, profile, cfg.seed)
                if minimal:
                    session.log(f"parity: {arch}: minimal failing example {session.records[minimal].description}\n"
                                f"        replay: {session.records[minimal].replay}")
            interrupts.check()
        except KeyboardInterrupt:
            interrupts.handled()
            session.write(complete=False, render=True)
            session.log(f"parity: interrupted; {len(session.records)} finished examples kept in {cfg.out}/report.json")
            raise
        except Exception:
            _keep(session)
            raise
        return session.write(complete=True)


def _keep(session: Session) -> None:
    """On an error, every finished example into report.json (written only now and then while running), for
    ``--resume``; if that fails too (a full disk), the last one written stays whole."""
    try:
        session.write(complete=False)
    except OSError as exc:
        session.log(f"parity: could not update {session.cfg.out}/report.json: {exc}")
    else:
        session.log(f"parity: {len(session.records)} finished examples kept in {session.cfg.out}/report.json")
