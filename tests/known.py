"""What a real-engine test expects of a result's ``known_issue``, read from the known-issue
table directly rather than through the code that attaches it."""

import pytest

from parity import known_issues
from parity.records import BackendResult
from parity.schema import execution_order
from parity.search import search


def diagnoses(engines, arch, record, result: BackendResult) -> set[str]:
    """Every diagnosis that may explain ``result`` of the example ``record`` on ``engines`` ((name, version)
    of each side); empty when nothing may: a pass, or a divergence or error no entry describes."""
    d = result.first_divergence
    kind = {"diverged": d and d.kind, "error": "error"}.get(result.status)
    # Where the divergence starts: a bug of long sequences explains none that starts before it acts.
    position = None if d is None else (len(record.prompts[d.prompt]) + d.step - 1 if d.step else
                                       next((i for i, e in enumerate(d.per_token) if e > d.band), None))
    return {f"{engine} {version}: {issue.diagnosis} (verified on {engine} {issue.versions})" for engine, version in engines
            for issue in known_issues.listed(engine, version, arch)
            if kind in issue.kinds and issue.message in (result.reason or "") and issue.applies(record.config)
            and (issue.starts is None or (position is not None and position >= issue.starts(record.config)))}


def inherited(result: BackendResult, record) -> set[str]:
    """A pair's: the known issues of its sides whose own divergence from the reference starts no later."""
    d = result.first_divergence
    if "~" not in result.backend or d is None:
        return set()
    sides = [r for r in record.results if r.backend in result.backend.split("~")]
    return {s.known_issue for s in sides if s.status == "diverged" and s.known_issue and
            (s.first_divergence.step, execution_order(s.first_divergence.tensor)) <= (d.step, execution_order(d.tensor))}


def check(result: BackendResult, engines, arch, record) -> None:
    """The result carries a known issue exactly when the table explains it (or, for a pair, a side's known
    divergence starting no later does), and then one of those."""
    expected = diagnoses(engines, arch, record, result) or inherited(result, record)
    if expected:
        assert result.known_issue in expected, (result.backend, result.status, result.known_issue)
    else:
        assert result.known_issue is None, (result.backend, result.status, result.known_issue)


def search_judging(session, arch, profile, seed):
    """``search`` on a shared session, and every example it judged, also those an earlier test
    had already judged (the session answers those from its records)."""
    seen: list[str] = []
    answer = session.known

    def known(example):
        seen.append(example.id)
        return answer(example)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(session, "known", known)
        minimal = search(session, arch, profile, seed)
    return minimal, [session.records[i] for i in dict.fromkeys(seen) if i in session.records]


# Families no example of which any engine computes without a known bug in the way: vLLM's CPU rotary kernel rotates
# DeepSeek-V3's MLA q/k views wrong on every config, and SGLang's CPU attention has no MLA path (unsupported).
# Strict: the day an engine computes one, the test passes, fails as XPASS, and the family leaves this list.
NOTHING_COMPARED = {"deepseek_v3": "every vLLM result is its CPU rotary kernel's known issue (MLA q/k views rotated "
                                   "wrong); SGLang is unsupported on CPU (no MLA path in its torch_native backend)"}


def archs_compared(archs):
    """``archs`` as pytest parameters, the families of ``NOTHING_COMPARED`` expected to fail (strictly)."""
    return [pytest.param(a, marks=pytest.mark.xfail(strict=True, reason=NOTHING_COMPARED[a]))
            if a in NOTHING_COMPARED else a for a in archs]
