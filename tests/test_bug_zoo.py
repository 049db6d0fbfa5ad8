"""The bug zoo: each real porting bug, re-injected into a real engine, is caught,
localized to the right tensor and layer, and shrunk to its minimal witness; and
the unpatched engine passes that very example (no false alarm), or, where no engine computes it without a known
bug, gives only that known bug, starting past the patched one's first divergence.

The fixtures and what is expected of them live in fixtures/zoo.py.
"""

from dataclasses import replace

import pytest

from fixtures.zoo import FIXTURES
from parity.example import Example
from parity.profiles import get
from parity.search import search
from parity.worker.contract import Execution

pytestmark = pytest.mark.parity


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.id for f in FIXTURES])
def test_bug_is_caught_localized_and_shrunk(parity_sessions, fixture):
    patched = parity_sessions([fixture.backend], [f"{fixture.backend}={fixture.path}"])
    try:
        minimal = search(patched, fixture.arch, get(fixture.profile), seed=0)
        assert minimal is not None, f"{fixture.id} was not caught"
        record = patched.records[minimal]
        example = Example.from_json(record.model_dump())
        # Caught on the execution surface that triggers it only: run the plainest way, it passes.
        plainly = patched.evaluate(replace(example, execution=Execution())) if fixture.execution else None
    finally:
        patched.close()  # this patch set is used by no other test: free its workers now
    (result,) = [r for r in record.results if r.backend == fixture.backend]
    assert result.status == fixture.status, result.reason
    d = result.first_divergence
    assert d.kind in fixture.kinds and d.layer == fixture.layer, d.tensor
    assert record.minimal and fixture.minimal(record.config), (fixture.minimal_text, record.description)
    modes = example.execution.modes()
    assert len(modes) == (1 if fixture.execution else 0) and set(modes) <= set(fixture.execution), record.description
    if plainly:
        assert {r.status for r in plainly.results} == {"pass"}, plainly.description

    clean = parity_sessions([fixture.backend])
    verdict = clean.evaluate(example, role="replay")
    (own,) = verdict.results
    if fixture.clean_issue is None:
        assert own.status == "pass", own.reason
    else:  # the engine's own known bug, starting past the patched one's first divergence: no false alarm there
        assert own.status == "pass" or (fixture.clean_issue in (own.known_issue or "")
                                        and own.first_divergence.kind not in fixture.kinds), (own.status, own.known_issue)
