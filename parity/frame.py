"""A report as a pandas DataFrame, for analysis in a notebook: ``parity.load_report(path)``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from parity import report as report_mod
from parity.records import Report, TensorRow

RESULT_COLUMNS = ["example", "arch", "description", "role", "minimal", "backend", "status"]
_WHERE = ["step", "prompt", "tensor", "kind", "layer", "verdict"]
ROW_COLUMNS = _WHERE + [f for f in TensorRow.model_fields if f not in _WHERE]
# Nullable dtypes: a missing layer (embed, logits) or a row-less result keeps integer and bool columns.
_NULLABLE = {**{c: "Int64" for c in ("step", "prompt", "layer", "worst_token")}, "non_finite": "boolean"}


def frame(report: Report) -> pd.DataFrame:
    """One row per (example, backend, tensor row); results without rows (error,
    unsupported) keep one row with empty tensor fields so their status is counted."""
    records = []
    for ex in report.examples:
        for r in ex.results:
            head = {"example": ex.id, "arch": ex.arch, "description": ex.description, "role": ex.role,
                    "minimal": ex.minimal, "backend": r.backend, "status": r.status}
            records += [{**head, **row.model_dump()} for row in r.rows] or [head]
    return pd.DataFrame.from_records(records, columns=RESULT_COLUMNS + ROW_COLUMNS).astype(_NULLABLE)


def load_report(path: str | Path) -> pd.DataFrame:
    """Read a report.json (or the directory holding it) into :func:`frame`'s table."""
    return frame(report_mod.read(Path(path)))
