"""nox sessions for parity. `nox --list` shows them.

Engine environments are not nox virtualenvs: parity builds them itself, once per
engine and pinned version, in ~/.cache/parity/envs (PARITY_CACHE_DIR), and every
session and clone reuses them.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "parity"]  # bench and parity-gpu on request
nox.options.reuse_existing_virtualenvs = True

DEFAULT_BACKENDS = ["vllm", "sglang"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite, real CPU engines included."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def parity(session: nox.Session) -> None:
    """Search every registry architecture on the default CPU engines (ci profile); report in reports/latest."""
    session.install("-e", ".")
    backends = [arg for b in DEFAULT_BACKENDS for arg in ("--backend", b)]
    session.run("parity", "run", "--profile", "ci", "--out", "reports/latest", *backends, *session.posargs)


@nox.session(name="parity-gpu", default=False)
def parity_gpu(session: nox.Session) -> None:
    """The same search on CUDA engines in bf16 (written, untested on a GPU)."""
    session.install("-e", ".")
    backends = [arg for b in DEFAULT_BACKENDS for arg in ("--backend", b)]
    session.run("parity", "run", "--device", "cuda", "--dtype", "bfloat16", "--profile", "ci",
                "--out", "reports/latest-gpu", *backends, *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Time parity per example against the bare CPU engines; prints a Markdown table."""
    session.install("-e", ".")
    session.run("python", "benchmarks/bench.py", *session.posargs)
