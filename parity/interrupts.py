"""Ctrl-C and SIGTERM that cannot be lost.

Python raises KeyboardInterrupt wherever the main thread happens to be when the
signal is handled. Inside a garbage-collector callback or a ``__del__`` method
that exception is printed as "Exception ignored" and dropped, and the run goes on
to exit 0 as if never interrupted. Hypothesis installs such a callback (it times
garbage collection), so a signal landing during a collection was lost. The
handler here raises as before and also remembers the signal; the session calls
:func:`check` at points where nothing can swallow it, which raises the
KeyboardInterrupt again if it was dropped.
"""

from __future__ import annotations

import signal

_pending = False


def _handler(signum: int, frame: object) -> None:
    global _pending
    _pending = True
    raise KeyboardInterrupt


def install() -> None:
    """Route SIGINT and SIGTERM (CI cancelling a job) through the remembering handler."""
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def check() -> None:
    """Raise KeyboardInterrupt if a signal arrived and its KeyboardInterrupt has not been handled."""
    if _pending:
        raise KeyboardInterrupt


def handled() -> None:
    """The KeyboardInterrupt reached its handler: stop re-raising it."""
    global _pending
    _pending = False
