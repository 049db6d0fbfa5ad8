"""``--patch`` files: applied in the worker process, and in every process an engine spawns from it.

vLLM's tensor-parallel ranks on CPU are spawned interpreters (its CPU platform forces
``spawn``): a patch applied in the worker never reaches them. The worker therefore
names its patches in ``PARITY_PATCHES``, which spawned processes inherit, and the
``sitecustomize`` module on the workers' PYTHONPATH (written by
``parity.pool.worker_path``) applies them when such a process starts.
"""

from __future__ import annotations

import os
import runpy
from typing import Sequence

ENV = "PARITY_PATCHES"

SITECUSTOMIZE = "from parity.worker import patches\n\npatches.apply_inherited()\n"
"""The workers' ``sitecustomize.py``: Python imports it at every interpreter's start."""


class PatchFailed(RuntimeError):
    """A ``--patch`` file raised while it was applied."""


def apply(paths: Sequence[str]) -> None:
    """Apply ``paths`` here, then name them to the processes this one spawns."""
    for path in paths:
        try:
            runpy.run_path(path, run_name="parity_patch")
        except BaseException as exc:
            raise PatchFailed(f"patch {path} failed to apply: {type(exc).__name__}: {exc}") from exc
    if paths:
        os.environ[ENV] = os.pathsep.join(paths)


def apply_inherited() -> None:
    """In a process spawned by a patched worker: apply the worker's patches (a no-op elsewhere)."""
    inherited = os.environ.get(ENV)
    if inherited:
        apply(inherited.split(os.pathsep))
