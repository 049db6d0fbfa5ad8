"""Multi-head latent attention's q/k in parity's canonical form (``ModuleNames.latent_attention``): transformers'
interleaved RoPE returns each rotated part de-interleaved, engines keep its pairs in place; the reference's capture
must put them back so that both compare.

Runs in the transformers environment, against transformers' own DeepSeek-V3 RoPE."""

import os
import subprocess
from pathlib import Path

import pytest

from parity import envs
from parity.backends import BACKENDS

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.parity

SCRIPT = """
import torch
from transformers.models.deepseek_v3.modeling_deepseek_v3 import apply_rotary_pos_emb_interleave
from parity.adapters.hf import latent_rotary

heads, seq, nope, rope = 3, 5, 4, 8
gen = torch.Generator().manual_seed(0)
q = torch.randn(1, heads, seq, rope, generator=gen, dtype=torch.float64)
k = torch.randn(1, 1, seq, rope, generator=gen, dtype=torch.float64)
angle = torch.arange(seq, dtype=torch.float64)[:, None] * 0.3 ** torch.arange(rope // 2, dtype=torch.float64)
cos, sin = torch.cat([angle.cos()] * 2, -1)[None], torch.cat([angle.sin()] * 2, -1)[None]
q_hf, k_hf = apply_rotary_pos_emb_interleave(q, k, cos, sin)

def in_place(x):  # GPT-J style, as the engines rotate: pair (2i, 2i+1) by angle i, left where it is
    even, odd, c, s = x[..., 0::2], x[..., 1::2], angle.cos(), angle.sin()
    return torch.stack([even * c - odd * s, odd * c + even * s], -1).flatten(-2)

# transformers' attention takes whole heads: the non-rotary part first, k's rotary part repeated over the heads.
query = torch.cat([torch.randn(1, heads, seq, nope, generator=gen, dtype=torch.float64), q_hf], -1)
key = torch.cat([torch.randn(1, heads, seq, nope, generator=gen, dtype=torch.float64), k_hf.expand(1, heads, seq, rope)], -1)
got_q, got_k = latent_rotary(query, key, rope, interleaved=True)
print(torch.equal(got_q, in_place(q)), torch.equal(got_k, in_place(k)), tuple(got_k.shape))
plain_q, _ = latent_rotary(query, key, rope, interleaved=False)
print(torch.equal(plain_q, q_hf))
"""


def test_reference_rotary_parts_are_put_in_the_engines_layout():
    python = envs.ensure(BACKENDS["transformers"], "cpu")
    proc = subprocess.run([str(python), "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    interleaved, plain = proc.stdout.strip().splitlines()
    assert interleaved == "True True (1, 1, 5, 8)"  # the rotary parts only, one key for all heads
    assert plain == "True"  # rotate-half RoPE (rope_interleave False) needs no reordering
