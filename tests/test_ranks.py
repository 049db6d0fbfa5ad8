"""Gathering tensor-parallel ranks' tensors into the canonical ones, for both layouts of kv heads the engines use
(the real engines at two ranks: tests/test_execution.py). Runs in the transformers environment (torch)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from parity import envs
from parity.backends import BACKENDS

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.parity

SCRIPT = """
import json
import torch
from parity.adapters.ranks import gather

Q, K, ATTN, RESID = ("step0/prompt0/layers.0." + kind for kind in ("q_rot", "k_rot", "attn_out", "residual"))

def heads(*values):  # [tokens=2, heads, head_dim=3], head h filled with values[h]
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1).expand(2, -1, 3).clone()

checks = {}
# vLLM: 4 query heads and 1 kv head over 2 ranks, each rank holding a copy of the kv head.
out = gather([{Q: heads(0, 1), K: heads(10), RESID: torch.ones(2, 4)},
              {Q: heads(2, 3), K: heads(10), RESID: torch.ones(2, 4)}], kv_heads=1)
checks["replicated"] = [torch.equal(out[Q], heads(0, 1, 2, 3)), torch.equal(out[K], heads(10)),
                        torch.equal(out[RESID], torch.ones(2, 4))]
# SGLang on CPU: 2 query heads and 1 kv head padded to 2 kv heads (4 query heads) over 2 ranks.
out = gather([{Q: heads(0, 1), K: heads(10)}, {Q: heads(-1, -1), K: heads(-1)}], kv_heads=1, heads=2)
checks["padded"] = [torch.equal(out[Q], heads(0, 1)), torch.equal(out[K], heads(10))]
# partial sums reduced at the layer's boundary: the ranks agree on the residual stream
partial = [{ATTN: torch.full((2, 4), 1.0), RESID: torch.ones(2, 4)}, {ATTN: torch.full((2, 4), 2.0), RESID: torch.ones(2, 4)}]
whole = [{ATTN: torch.full((2, 4), 3.0), RESID: torch.ones(2, 4)}, {ATTN: torch.full((2, 4), 3.0), RESID: torch.ones(2, 4)}]
# never reduced (a port's bug): the residual streams differ too, and rank 0's partial output shows where it starts
lost = [{ATTN: torch.full((2, 4), 1.0), RESID: torch.ones(2, 4)}, {ATTN: torch.full((2, 4), 2.0), RESID: torch.zeros(2, 4)}]
checks["unreduced"] = [torch.equal(gather(partial, kv_heads=2)[ATTN], torch.full((2, 4), 3.0)),
                       # reduced in the module: every rank holds the whole output, never summed
                       torch.equal(gather(whole, kv_heads=2)[ATTN], torch.full((2, 4), 3.0)),
                       torch.equal(gather(lost, kv_heads=2)[ATTN], torch.full((2, 4), 1.0))]
print(json.dumps(checks))
"""


def test_ranks_tensors_gather_into_the_canonical_ones():
    python = envs.ensure(BACKENDS["transformers"], "cpu")
    proc = subprocess.run([str(python), "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    checks = json.loads(proc.stdout.strip().splitlines()[-1])
    assert checks == {"replicated": [True] * 3, "padded": [True] * 2, "unreduced": [True] * 3}, checks
