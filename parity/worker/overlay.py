"""Put a change's Python files ahead of an installed engine's, in a worker's own process.

``parity pr`` writes an overlay directory holding the changed files at their paths in
the installed package (``vllm/model_executor/layers/...``), a ``deleted.txt`` naming the
modules the change removes, and a ``sitecustomize.py`` that calls :func:`install` at
interpreter start-up; the directory goes first on the worker's ``PYTHONPATH``, so the
engine's environment itself is never modified and every process the engine spawns
(which inherits the environment) imports the same files.

A directory on ``PYTHONPATH`` cannot simply shadow single files: Python takes the first
regular package it finds, so an overlay ``vllm/`` would hide the whole installed package,
and one without ``__init__.py`` is ignored next to it. A finder first on ``sys.meta_path``
answers for exactly the overlaid modules instead and leaves every other one to the
installed engine. Standard library only: this runs before anything else in the worker.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

DELETED = "deleted.txt"
SITECUSTOMIZE = "sitecustomize.py"


def module_name(relative: Path) -> str:
    """``vllm/layers/x.py`` -> ``vllm.layers.x``; a package's ``__init__.py`` -> the package."""
    parts = list(relative.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class OverlayFinder(importlib.abc.MetaPathFinder):
    def __init__(self, root: Path):
        self.files = {module_name(p.relative_to(root)): p for p in root.rglob("*.py")
                      if p.relative_to(root) != Path(SITECUSTOMIZE)}
        deleted = root / DELETED
        self.deleted = set(deleted.read_text().split()) if deleted.is_file() else set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.deleted:
            raise ModuleNotFoundError(f"No module named {fullname!r} (deleted by the change under test)", name=fullname)
        file = self.files.get(fullname)
        if file is None:
            return None
        if file.name != "__init__.py":
            return importlib.util.spec_from_file_location(fullname, file)
        # A changed package __init__: its submodules still come from the installed package (and the overlay).
        installed = importlib.machinery.PathFinder.find_spec(fullname, path)
        locations = [str(file.parent)] + list(installed.submodule_search_locations if installed else [])
        return importlib.util.spec_from_file_location(fullname, file, submodule_search_locations=locations)


def install(sitecustomize: str) -> None:
    """Called by the overlay's sitecustomize.py with its own ``__file__``."""
    sys.meta_path.insert(0, OverlayFinder(Path(sitecustomize).resolve().parent))
