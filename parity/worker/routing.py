"""Attributing the tokens of an engine's flattened forward to prompts and steps.

Engines flatten a batch of prompts into one ``[num_tokens, ...]`` tensor and may
schedule prefill chunks and decode tokens of several prompts in one forward.
:class:`TokenRouter` attributes every token to ``(prompt, step)`` from its
position and id alone, so adapters need no engine-internal batch metadata.
Standard library only: unit-tested without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


class CaptureError(RuntimeError):
    """The engine's activations could not be mapped onto the canonical schema."""


@dataclass(frozen=True)
class Segment:
    prompt: int
    step: int
    start: int  # row range in the flattened forward
    end: int
    samples: bool  # the engine computes logits for the segment's last token
    cached: int = 0  # prompt tokens before ``start`` the engine took from its prefix cache, not computed
    donor: int | None = None  # the prompt whose prefill computed those cached tokens


class TokenRouter:
    """Attributes the tokens of each flattened forward to prompts and steps.

    Requires what the strategies guarantee: prompts of distinct lengths, so a
    decode token's position names its prompt, and distinct prompts, so a
    prefill chunk's ids name its prompt. Prompts sharing a prefix (for the
    prefix cache) must be served in order, one after another: a chunk that lies
    within the shared prefix is then the earliest unfinished prompt's.

    A prompt's first chunk may start past position 0: the engine took the
    positions before it from its prefix cache. Its segment names the prompt
    whose prefill computed them (``donor``), so the Recorder can fill them in.
    """

    def __init__(self, prompts: Sequence[Sequence[int]], decode_steps: int):
        self.prompts = [list(p) for p in prompts]
        self.decode_steps = decode_steps
        self.prefilled = [0] * len(self.prompts)  # prompt tokens seen so far
        self.decoded = [0] * len(self.prompts)  # decode steps seen so far
        self._routed: set[int] = set()
        self.forwards = 0
        self.mixed = 0  # forwards holding both a prefill chunk and a decode step

    def route(self, positions: Sequence[int], input_ids: Sequence[int]) -> list[Segment]:
        segments: list[Segment] = []
        self._routed = set()  # a sequence contributes at most one segment per forward
        start = 0
        n = len(positions)
        while start < n:
            end = start + 1
            p0 = positions[start]
            while end < n and positions[end] == positions[end - 1] + 1 and self._is_prefill(p0, input_ids[start : end + 1]):
                end += 1
            segments.append(self._attribute(positions[start], list(input_ids[start:end]), start, end))
            start = end
        self.forwards += 1
        self.mixed += len({s.step == 0 for s in segments}) == 2
        return segments

    def _is_prefill(self, p0: int, ids: Sequence[int]) -> bool:
        # Consecutive positions form one prefill chunk only while they spell a
        # prompt's next tokens; otherwise the next token starts a new segment
        # (e.g. decode tokens of two prompts at positions p and p+1).
        return bool(self._prefills(p0, list(ids)))

    def _prefills(self, pos: int, ids: list[int]) -> list[int]:
        """Prompts whose next tokens at ``pos`` are ``ids``, or whose first tokens after a cache hit are."""
        return [j for j, p in enumerate(self.prompts)
                if p[pos : pos + len(ids)] == ids
                and (self.prefilled[j] == pos or (self.prefilled[j] == 0 and self._donor(j, pos) is not None))]

    def _donor(self, j: int, cached: int) -> int | None:
        """The prompt, other than ``j``, whose prefill has computed ``j``'s first ``cached`` tokens."""
        return next((k for k, p in enumerate(self.prompts) if k != j and self.prefilled[k] >= cached
                     and p[:cached] == self.prompts[j][:cached]), None)

    def _attribute(self, pos: int, ids: list[int], start: int, end: int) -> Segment:
        prefill = self._prefills(pos, ids)
        decode = [
            j for j, p in enumerate(self.prompts)
            if len(ids) == 1 and self.prefilled[j] == len(p) and self.decoded[j] < self.decode_steps
            and len(p) + self.decoded[j] == pos
        ]
        candidates = [j for j in prefill + decode if j not in self._routed]
        if len(candidates) > 1 and not decode and self._share_prefix(candidates, pos + len(ids)):
            candidates = candidates[:1]  # served in order: the earliest unfinished prompt
        if len(candidates) != 1:
            raise CaptureError(
                f"cannot attribute {len(ids)} token(s) at position {pos} (ids {ids[:8]}) to exactly one prompt "
                f"(candidates {candidates}); prompts must have distinct lengths and contents"
            )
        j = candidates[0]
        self._routed.add(j)
        if j in prefill:
            cached = pos - self.prefilled[j]
            self.prefilled[j] = pos + len(ids)
            return Segment(j, 0, start, end, samples=self.prefilled[j] == len(self.prompts[j]), cached=cached,
                           donor=self._donor(j, cached) if cached else None)
        self.decoded[j] += 1
        return Segment(j, self.decoded[j], start, end, samples=True)

    def _share_prefix(self, prompts: list[int], length: int) -> bool:
        return len({tuple(self.prompts[j][:length]) for j in prompts}) == 1
