"""Managed engine environments, built once per backend, device and recipe into a
cache folder outside any checkout and reused across runs, clones and nox sessions.

The folder name carries a digest of the recipe and the Python version, so a
changed pin builds a new environment instead of mutating an old one. A build
takes a file lock (concurrent nox sessions or xdist workers wait for one build)
and is complete only when its marker file exists; a half-built folder is
rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from parity.backends import BackendDef, Step

MARKER = "parity-env.json"
PACKAGE_ROOT = Path(__file__).resolve().parent


class EnvBuildError(RuntimeError):
    """An environment could not be built."""


def cache_dir() -> Path:
    if os.environ.get("PARITY_CACHE_DIR"):
        return Path(os.environ["PARITY_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "parity"


def recipe_digest(steps: tuple[Step, ...]) -> str:
    payload = [[s.action, *s.args] for s in steps] + [sys.version_info[:2]]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:12]


def location(backend: BackendDef, device: str) -> Path:
    steps = recipe(backend, device)
    return cache_dir() / "envs" / f"{backend.name}-{device}-{recipe_digest(steps)}"


def recipe(backend: BackendDef, device: str) -> tuple[Step, ...]:
    try:
        return backend.environments[device]
    except KeyError:
        raise EnvBuildError(f"backend {backend.name!r} has no environment recipe for device {device!r}") from None


def python_of(env: Path) -> Path:
    return env / "bin" / "python"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(backend: BackendDef, device: str, log: Callable[[str], None] = print) -> Path:
    """Return the interpreter of the managed environment, building it first if needed."""
    env = location(backend, device)
    if (env / MARKER).exists():
        return python_of(env)
    with _locked(env.with_name(env.name + ".lock")):
        if (env / MARKER).exists():  # built by someone else while we waited
            return python_of(env)
        _build(backend, device, env, log)
    return python_of(env)


def _build(backend: BackendDef, device: str, env: Path, log: Callable[[str], None]) -> None:
    shutil.rmtree(env, ignore_errors=True)
    started = time.monotonic()
    log(f"parity: building the {backend.name} environment for {device} in {env} (once; a few minutes)")
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    build_log = env / "build.log"
    python = str(python_of(env))
    for step in recipe(backend, device):
        log(f"parity:   {step.action} {' '.join(step.args)}")
        if step.action == "install":
            cmd = [python, "-m", "pip", "install", "--disable-pip-version-check", *step.args]
        elif step.action == "uninstall":
            cmd = [python, "-m", "pip", "uninstall", "-y", *step.args]
        else:
            cmd = [python, "-c", _VENDOR, str(PACKAGE_ROOT / step.args[0])]
        with open(build_log, "a") as out:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            tail = "\n".join(
                line for line in build_log.read_text(errors="replace").splitlines()[-40:]
                if "is neither a file nor a directory" not in line
            )
            raise EnvBuildError(
                f"building the {backend.name} environment failed at `{' '.join(step.args)}` "
                f"(exit {proc.returncode}); full log: {build_log}\n{tail}"
            )
    versions = subprocess.run(
        [python, "-c", f"import importlib.metadata as m; print(m.version({backend.engine_package!r}))"],
        capture_output=True, text=True,
    ).stdout.strip()
    (env / MARKER).write_text(json.dumps({
        "backend": backend.name, "device": device, "engine_version": versions,
        "recipe": [[s.action, *s.args] for s in recipe(backend, device)],
        "seconds": round(time.monotonic() - started, 1),
    }, indent=1))
    log(f"parity: {backend.name} environment ready in {time.monotonic() - started:.0f}s")


# Copies a directory shipped with parity into the target interpreter's site-packages.
_VENDOR = (
    "import shutil, sys, sysconfig, pathlib; src = pathlib.Path(sys.argv[1]); "
    "shutil.copytree(src, pathlib.Path(sysconfig.get_paths()['purelib']) / src.name, dirs_exist_ok=True)"
)
