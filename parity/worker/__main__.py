"""Worker process: ``python -m parity.worker --adapter NAME [--patch FILE]...``.

Runs inside a backend's own environment: imports the engine once, applies the
user's patch files, then serves requests from stdin until ``shutdown`` or EOF.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import runpy
import sys
import traceback
from typing import Any

from parity.worker import protocol


def _error(exc: BaseException) -> dict[str, Any]:
    return {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)[:4000],
                                   "traceback": traceback.format_exc()[-6000:]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parity.worker")
    parser.add_argument("--adapter", required=True, help="module in parity.adapters")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--patch", action="append", default=[])
    args = parser.parse_args(argv)

    # Keep a private channel for replies, then send fd 1 to stderr: engines print to stdout.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    try:
        module = importlib.import_module(f"parity.adapters.{args.adapter}")
        adapter = module.Adapter(device=args.device)
        for patch in args.patch:
            try:
                runpy.run_path(patch, run_name="parity_patch")
            except BaseException as exc:
                raise RuntimeError(f"patch {patch} failed to apply: {type(exc).__name__}: {exc}") from exc
        # Engines collect garbage after every model; the engine import's millions of
        # objects never die, so keep them out of every later collection.
        gc.freeze()
        hello = {"protocol": protocol.PROTOCOL_VERSION, "pid": os.getpid(), "python": sys.executable,
                 **adapter.capabilities()}
        protocol.write(replies, {"ok": True, "result": hello})
    except BaseException as exc:
        protocol.write(replies, _error(exc))
        return 3

    for line in sys.stdin.buffer:
        request = protocol.decode(line)
        op = request.pop("op")
        if op == "shutdown":
            protocol.write(replies, {"ok": True, "result": {}})
            break
        try:
            handler = getattr(adapter, op, None)
            if handler is None or op.startswith("_") or op == "capabilities":
                raise ValueError(f"backend {args.adapter!r} does not support the request {op!r}")
            protocol.write(replies, {"ok": True, "result": handler(**request)})
        except Exception as exc:
            protocol.write(replies, _error(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
