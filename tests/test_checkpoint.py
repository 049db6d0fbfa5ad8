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

class Router(torch.nn.Module):
    def __init__(self, buffers):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(64, 32))
        if buffers:  # as GLM-4-MoE's router keeps its correction bias, and a rotary module its frequencies
            self.e_score_correction_bias = torch.nn.Buffer(torch.zeros(64))
            self.inv_freq = torch.nn.Buffer(torch.zeros(16), persistent=False)

with_buffers, without = Router(True), Router(False)
randomize(with_buffers, 0)
randomize(without, 0)
print(with_buffers.e_score_correction_bias.std().item(), with_buffers.inv_freq.abs().max().item(),
      torch.equal(with_buffers.weight, without.weight))
"""


def test_randomize_draws_stored_buffers_after_the_parameters():
    python = envs.ensure(BACKENDS["transformers"], "cpu")
    proc = subprocess.run([str(python), "-c", BUFFERS], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    stored, unstored, same_weights = proc.stdout.split()
    assert float(stored) == pytest.approx(0.1, rel=0.3)  # its initial value (zero) + N(0, 0.1^2): it moves the choice
    assert float(unstored) == 0.0  # not in the checkpoint: left to the model
    assert same_weights == "True"  # a family without stored buffers draws the weights it always drew
