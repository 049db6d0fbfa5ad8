"""Worker process: ``python -m parity.worker --adapter NAME [--patch FILE]...``.

Runs inside a backend's own environment: imports the engine once, applies the
user's patch files, says hello (its :class:`~parity.worker.contract.Capabilities`),
then serves requests from stdin until ``shutdown`` or EOF, and tears down the engine it
still holds.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
import traceback
from typing import Any, Callable, Mapping

from parity import checkpoint
from parity.adapters.base import EngineAdapter, Unusable
from parity.worker import contract, patches, protocol
from parity.worker.contract import (CheckpointReply, CheckpointRequest, GenericRequest, ModulesRequest,
                                    ReleaseRequest, RunRequest, SurfaceRequest)


def _error(exc: BaseException) -> dict[str, Any]:
    error = contract.ErrorReply(type=type(exc).__name__, message=str(exc)[:4000],
                                traceback=traceback.format_exc()[-6000:], usable=not isinstance(exc, Unusable))
    return {"ok": False, "error": contract.to_json(error)}


def _write_checkpoint(request: CheckpointRequest) -> CheckpointReply:
    return CheckpointReply(files=checkpoint.write(request.config, request.seed, request.dir)["files"])


def operations(adapter: EngineAdapter) -> Mapping[type, Callable[[Any], Any]]:
    """Every request a worker serves, by request type (``shutdown`` ends the loop instead)."""
    return {RunRequest: adapter.run, CheckpointRequest: _write_checkpoint, SurfaceRequest: adapter.surface,
            ModulesRequest: adapter.modules, GenericRequest: adapter.generic, ReleaseRequest: adapter.release}


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
        patches.apply(args.patch, after=adapter.engine)
        # Engines collect garbage after every model; the engine import's millions of
        # objects never die, so keep them out of every later collection.
        gc.freeze()
        protocol.write(replies, {"ok": True, "result": contract.to_json(adapter.capabilities())})
    except BaseException as exc:
        protocol.write(replies, _error(exc))
        return 3

    code = _serve(adapter, replies)
    try:
        adapter.close()  # the engine held for a next request
    except Unusable as exc:
        print(f"parity.worker: {exc}", file=sys.stderr)
        return code or 4
    return code


def _serve(adapter: EngineAdapter, replies: Any) -> int:
    handlers = operations(adapter)
    for line in sys.stdin.buffer:
        try:
            request = contract.request_from_json(protocol.decode(line))
        except ValueError as exc:  # ContractError included
            protocol.write(replies, _error(exc))
            continue
        if isinstance(request, contract.ShutdownRequest):
            protocol.write(replies, {"ok": True, "result": contract.to_json(contract.ShutdownReply())})
            break
        try:
            protocol.write(replies, {"ok": True, "result": contract.to_json(handlers[type(request)](request))})
        except Exception as exc:
            protocol.write(replies, _error(exc))
            if isinstance(exc, Unusable):
                return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
