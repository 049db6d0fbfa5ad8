import pytest

from parity.worker.routing import CaptureError, TokenRouter

A = [5, 6, 7]
B = [9, 8, 7, 6]


def segs(router, positions, ids):
    return [(s.prompt, s.step, s.start, s.end, s.samples) for s in router.route(positions, ids)]


def test_batched_prefill_then_lockstep_decode():
    r = TokenRouter([A, B], decode_steps=2)
    assert segs(r, [0, 1, 2, 0, 1, 2, 3], A + B) == [(0, 0, 0, 3, True), (1, 0, 3, 7, True)]
    # decode step 1 of A sits at position 3, of B at 4: consecutive positions, two sequences
    assert segs(r, [3, 4], [11, 12]) == [(0, 1, 0, 1, True), (1, 1, 1, 2, True)]
    assert segs(r, [4, 5], [13, 14]) == [(0, 2, 0, 1, True), (1, 2, 1, 2, True)]


def test_decode_order_does_not_matter_within_a_forward():
    # lengths 8 and 9: A's second decode and B's first decode share position 9 across steps
    a, b = list(range(1, 9)), list(range(20, 29))
    r = TokenRouter([a, b], decode_steps=2)
    r.route(list(range(8)) + list(range(9)), a + b)
    assert segs(r, [9, 8], [1, 2]) == [(1, 1, 0, 1, True), (0, 1, 1, 2, True)]
    assert segs(r, [10, 9], [3, 4]) == [(1, 2, 0, 1, True), (0, 2, 1, 2, True)]


def test_chunked_prefill_samples_only_at_the_end():
    r = TokenRouter([B], decode_steps=1)
    assert segs(r, [0, 1], B[:2]) == [(0, 0, 0, 2, False)]
    assert segs(r, [2, 3], B[2:]) == [(0, 0, 0, 2, True)]


def test_one_prompt_at_a_time_like_the_reference():
    r = TokenRouter([A, B], decode_steps=1)
    assert segs(r, [0, 1, 2], A) == [(0, 0, 0, 3, True)]
    assert segs(r, [3], [1]) == [(0, 1, 0, 1, True)]
    assert segs(r, [0, 1, 2, 3], B) == [(1, 0, 0, 4, True)]
    assert segs(r, [4], [1]) == [(1, 1, 0, 1, True)]


def test_unattributable_tokens_raise():
    r = TokenRouter([A], decode_steps=1)
    with pytest.raises(CaptureError, match="cannot attribute"):
        r.route([0, 1], [1, 2])  # not a prefix of any prompt
    r2 = TokenRouter([A], decode_steps=1)
    r2.route([0, 1, 2], A)
    r2.route([3], [4])
    with pytest.raises(CaptureError):
        r2.route([4], [4])  # more decode steps than asked for


SHARED = [3, 1, 4, 1]
P, Q = SHARED + [5, 9], SHARED + [2, 6, 5]


def test_a_prefix_cache_hit_starts_past_the_cached_tokens_and_names_who_computed_them():
    r = TokenRouter([P, Q], decode_steps=1)
    assert segs(r, list(range(6)), P) == [(0, 0, 0, 6, True)]
    assert segs(r, [6], [7]) == [(0, 1, 0, 1, True)]
    (hit,) = r.route([4, 5, 6], Q[4:])
    assert (hit.prompt, hit.step, hit.cached, hit.donor, hit.samples) == (1, 0, 4, 0, True)


def test_chunks_within_a_shared_prefix_belong_to_the_earliest_unfinished_prompt():
    r = TokenRouter([P, Q], decode_steps=1)
    assert segs(r, [0, 1], SHARED[:2]) == [(0, 0, 0, 2, False)]
    assert segs(r, [2, 3], SHARED[2:]) == [(0, 0, 0, 2, False)]
    assert segs(r, [4, 5], P[4:]) == [(0, 0, 0, 2, True)]
    r.route([6], [7])
    assert segs(r, [0, 1], SHARED[:2]) == [(1, 0, 0, 2, False)]  # no cache hit: Q computes its own prefix


def test_a_hit_needs_a_prompt_that_computed_the_prefix():
    with pytest.raises(CaptureError, match="cannot attribute"):
        TokenRouter([P, Q], decode_steps=1).route([4, 5, 6], Q[4:])


def test_a_prompt_joining_a_running_one_is_told_apart_by_position():
    """Longest first, a joining prompt's tokens sit below every running prompt's decode position, even with the
    same token fed at the same step; a forward holding both a prefill and a decode step counts as mixed."""
    long, short = [4, 4, 4, 4], [4, 4, 5]
    r = TokenRouter([long, short], decode_steps=2)
    assert segs(r, [0, 1, 2, 3], long) == [(0, 0, 0, 4, True)]
    assert segs(r, [4, 0, 1, 2], [4] + short) == [(0, 1, 0, 1, True), (1, 0, 1, 4, True)]
    assert segs(r, [3, 5], [4, 4]) == [(1, 1, 0, 1, True), (0, 2, 1, 2, True)]
    assert segs(r, [4], [4]) == [(1, 2, 0, 1, True)]
    assert (r.forwards, r.mixed) == (4, 1)
