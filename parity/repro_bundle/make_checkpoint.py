"""Rebuild this bundle's random-weight checkpoint into ./checkpoint from config.json and the seed in
example.json, with parity's own recipe (checkpoint.py, copied from parity unchanged): needs only
torch, transformers and safetensors."""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import checkpoint  # noqa: E402  (this bundle's copy of parity/checkpoint.py)


def main() -> Path:
    target = HERE / "checkpoint"
    if not (target / "model.safetensors").is_file():
        seed = json.loads((HERE / "example.json").read_text())["weight_seed"]
        checkpoint.write(json.loads((HERE / "config.json").read_text()), seed, str(target))
    return target


if __name__ == "__main__":
    print(main())
