"""``--patch`` files: applied in the worker process, and in every process an engine spawns from it.

vLLM's tensor-parallel ranks on CPU are spawned interpreters (its CPU platform forces
``spawn``): a patch applied in the worker never reaches them. The worker therefore
names its patches in ``PARITY_PATCHES``, which spawned processes inherit, and the
``sitecustomize`` module on the workers' PYTHONPATH (written by
``parity.pool.worker_path``) applies them in such a process once it imports the engine
(``PARITY_PATCHES_AFTER``): not at its start, since an engine also spawns interpreters that
never import it, and each would import the engine for nothing (torch inductor's ISA probes,
which vLLM's first forward at two ranks runs in every rank, and multiprocessing's resource
tracker: 55 s of a 70 s two-rank example of the bug zoo's T1, on 2 cores).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import runpy
import sys
from typing import Any, Sequence

ENV = "PARITY_PATCHES"
AFTER = "PARITY_PATCHES_AFTER"

SITECUSTOMIZE = "from parity.worker import patches\n\npatches.apply_inherited()\n"
"""The workers' ``sitecustomize.py``: Python imports it at every interpreter's start."""


class PatchFailed(RuntimeError):
    """A ``--patch`` file raised while it was applied."""


def apply(paths: Sequence[str], after: str | None = None) -> None:
    """Apply ``paths`` here, then name them to the processes this one spawns, to be applied there once they
    import the module ``after`` (the engine's package; None: at their start)."""
    for path in paths:
        try:
            runpy.run_path(path, run_name="parity_patch")
        except BaseException as exc:
            raise PatchFailed(f"patch {path} failed to apply: {type(exc).__name__}: {exc}") from exc
    if paths:
        os.environ[ENV] = os.pathsep.join(paths)
        if after:
            os.environ[AFTER] = after


def apply_inherited() -> None:
    """In a process spawned by a patched worker: apply the worker's patches once it imports their engine (a
    no-op elsewhere)."""
    inherited = os.environ.get(ENV)
    if not inherited:
        return
    paths, after = inherited.split(os.pathsep), os.environ.get(AFTER)
    if after is None or after in sys.modules:
        apply(paths, after)
    else:
        sys.meta_path.insert(0, _AfterImport(after, lambda: apply(paths, after)))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then`` right after module ``name`` is first imported (its own code run, before the importer goes on)."""

    def __init__(self, name: str, then: Any):
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            run, then = spec.loader.exec_module, self.then

            def exec_module(module: Any) -> None:
                run(module)
                then()

            spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
