"""What a backend can run, decided in one place from its worker's own capabilities
(the hello) against the architecture registry: used by the search, before each
example, and by ``parity archs`` for the support matrix.
"""

from __future__ import annotations

from typing import Any, Mapping

from parity import known_issues, registry
from parity.worker.contract import Capabilities, Execution


def supports(caps: Capabilities, arch: str, config: Mapping[str, Any] | None = None,
             dtype: str | None = None, execution: Execution = Execution()) -> str | None:
    """None if the backend can run the architecture (and the features ``config`` turns on,
    see ``registry.FEATURES``) in ``dtype``, the way ``execution`` asks, else the reason it cannot."""
    if dtype is not None and dtype not in caps.dtypes:
        why = caps.unsupported_dtypes.get(dtype, f"it runs {', '.join(caps.dtypes)}")
        return f"{caps.engine} ({caps.versions_text}) does not run {dtype} here: {why}"
    spec = registry.get(arch)
    if spec.architecture not in caps.architectures:
        return f"{caps.engine} ({caps.versions_text}) does not register {spec.architecture}"
    for feature in registry.features(config or {}):
        if feature in caps.unsupported_features:
            return f"{caps.engine} ({caps.versions_text}) does not support {feature}: {caps.unsupported_features[feature]}"
    for mode in execution.modes():
        if mode in caps.unsupported_execution:
            return f"{caps.engine} ({caps.versions_text}) cannot run with {mode}: {caps.unsupported_execution[mode]}"
    return None


def matrix(workers: Mapping[str, Capabilities]) -> list[str]:
    """The support matrix as text: one row per architecture, one cell per worker label: yes,
    partial (some features the family may turn on are lacking) or no, with the engines' reasons
    below the table, then the execution modes a worker cannot run; ``*`` marks known engine bugs on
    some configs (parity/known_issues.py), listed below too."""
    rows = ["", f"{'':10} " + " ".join(f"{label:12}" for label in workers)]
    notes: list[str] = []
    for name, spec in registry.ARCHITECTURES.items():
        cells = []
        for label, caps in workers.items():
            reasons = [supports(caps, name)]
            if reasons[0] is None:
                reasons = [r for f in registry.possible_features(spec)
                           if (r := supports(caps, name, {registry.FEATURES[f]: True}))]
                cell = "partial" if reasons else "yes"
            else:
                cell = "no"
            known = known_issues.listed(caps.engine, caps.engine_version, name)
            cells.append(f"{cell + ('*' if known and cell != 'no' else ''):12}")
            notes += [f"{name} on {label}: {r}" for r in reasons]
            notes += [f"{name} on {label}: known issue ({', '.join(i.kinds)}): {i.diagnosis}" for i in known]
        rows.append(f"{name:10} " + " ".join(cells))
    notes += [f"every architecture on {label}: cannot run with {mode}: {reason}"
              for label, caps in workers.items() for mode, reason in caps.unsupported_execution.items()]
    return rows + [""] + notes
