"""parity: layer-by-layer numerical parity of LLM inference engines against transformers.

This package is imported inside engine environments too (by the worker), so it
imports nothing heavy at top level; `load_report` is resolved lazily.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_report"]


def __getattr__(name: str):
    if name == "load_report":
        from parity.frame import load_report

        return load_report
    raise AttributeError(f"module 'parity' has no attribute {name!r}")
