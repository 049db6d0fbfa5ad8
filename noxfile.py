"""nox sessions for parity. `nox --list` shows them.

Engine environments are not nox virtualenvs: parity builds them itself, once per
engine and pinned version, in ~/.cache/parity/envs (PARITY_CACHE_DIR), and every
session and clone reuses them.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests", "parity"]  # bench and parity-gpu on request
nox.options.reuse_existing_virtualenvs = True

DEFAULT_BACKENDS = ["vllm", "sglang"]


def _ensure_chromium(session: nox.Session) -> None:
    """The HTML report is tested in a real headless browser: Debian's chromium, never a downloaded one."""
    if shutil.which("chromium"):
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if not shutil.which("apt-get") or (sudo and not shutil.which("sudo")):
        session.error("chromium is missing: install it (Debian/Ubuntu: sudo apt-get install chromium), then rerun")
    session.log("installing Debian's chromium for the HTML report test (once)")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run(*sudo, "apt-get", "update", "-qq", external=True, env=env, silent=True)
    session.run(*sudo, "apt-get", "install", "-y", "-qq", "chromium", external=True, env=env, silent=True)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite, real CPU engines included (installs Debian's chromium if it is missing)."""
    _ensure_chromium(session)
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


@nox.session(name="gpu-smoke", default=False)
def gpu_smoke(session: nox.Session) -> None:
    """On a GPU machine: the reference on CUDA (fp32, bf16) judged against the CPU reference. Never in CI."""
    session.install("-e", ".")
    session.run("python", "-m", "parity.gpu_smoke", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Time parity per example against the bare CPU engines; prints a Markdown table."""
    session.install("-e", ".")
    session.run("python", "benchmarks/bench.py", *session.posargs)
