"""Tiny checkpoints: embeddings are found by module type, whatever a family calls them; saved buffers are drawn too.

Runs ``checkpoint.randomize`` where it runs in a parity run, in the transformers environment."""

import os
import subprocess
from pathlib import Path

import pytest

from parity import envs
from parity.backends import BACKENDS

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.parity

TOY = """
import torch
from parity.checkpoint import randomize

class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = torch.nn.Embedding(4096, 64)  # an embedding whose name does not say so
        self.embed_proj = torch.nn.Linear(64, 64)  # a matrix whose name does
        self.head = torch.nn.Linear(64, 4096, bias=False)
        self.head.weight = self.tok.weight  # tied, as in tied checkpoints

toy = Toy()
randomize(toy, 0)
print(toy.tok.weight.std().item(), toy.embed_proj.weight.std().item())
"""


def test_randomize_finds_embeddings_by_module_type():
    python = envs.ensure(BACKENDS["transformers"], "cpu")
    proc = subprocess.run([str(python), "-c", TOY], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    embedding, matrix = map(float, proc.stdout.split())
    assert embedding == pytest.approx(1.0, rel=0.05)  # N(0, 1), the tied head included
    assert matrix == pytest.approx(64**-0.5, rel=0.1)  # N(0, 1/fan_in)


BUFFERS = """
import torch
from parity.checkpoint import randomize

def toy():
    torch.manual_seed(0)  # the same initial values, which 1-D weights are drawn around
    m = torch.nn.Linear(8, 8)
    m.register_buffer("bias_for_choice", torch.zeros(8))  # saved: a weight kept as a buffer
    m.register_buffer("inv_freq", torch.ones(8), persistent=False)  # derived, never saved
    return m

torch.manual_seed(0)
plain = torch.nn.Linear(8, 8)
randomize(plain, 0)
with_buffers = toy()
randomize(with_buffers, 0)
print(with_buffers.bias_for_choice.std().item(), with_buffers.inv_freq.eq(1).all().item(),
      torch.equal(plain.weight, with_buffers.weight) and torch.equal(plain.bias, with_buffers.bias))
"""


def test_randomize_draws_saved_buffers_after_every_parameter():
    python = envs.ensure(BACKENDS["transformers"], "cpu")
    proc = subprocess.run([str(python), "-c", BUFFERS], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    spread, derived_untouched, parameters_unmoved = proc.stdout.split()
    assert 0.03 < float(spread) < 0.3  # N(0, 0.1^2) around its zero init, like every 1-D weight
    assert derived_untouched == "True" and parameters_unmoved == "True"
