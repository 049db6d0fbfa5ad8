"""A parity search as pytest items, one per architecture, so pytest-xdist can
spread a run over processes (one worker pool each); the plugin merges the
processes' reports into ``<parity-out>/<backends>/report.json`` at the end::

    pytest --pyargs parity.pytest_search -n 2 --parity-backend vllm --parity-seed 0 --parity-out reports/xdist
"""

from __future__ import annotations

import pytest

from parity import registry
from parity.search import search

pytestmark = pytest.mark.parity


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "arch" in metafunc.fixturenames:
        archs = metafunc.config.getoption("--parity-arch") or list(registry.ARCHITECTURES)
        metafunc.parametrize("arch", archs)


def test_search(parity_sessions, parity_config, arch: str) -> None:
    session = parity_sessions()
    minimal = search(session, arch, parity_config.profile, parity_config.seed)
    session.write(complete=True)
    assert minimal is None, f"{arch}: {session.records[minimal].description} fails; replay: {session.records[minimal].replay}"
