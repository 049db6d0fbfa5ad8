import numpy as np
import pytest

from parity import compare, schema, tolerance


def acts(seed=0, layers=2, tokens=3, perturb=None, ids=(1, 2, 3)):
    rng = np.random.default_rng(seed)
    out = {schema.key(0, 0, schema.TOKEN_IDS): np.array(ids)}
    names = ["embed"] + [schema.layer_name(i, k) for i in range(layers) for k in schema.LAYER_KINDS] + ["final_norm"]
    for n in names:
        out[schema.key(0, 0, n)] = rng.standard_normal((tokens, 8))
    for name, delta in (perturb or {}).items():
        out[schema.key(0, 0, name)] = out[schema.key(0, 0, name)] + delta
    return out


def test_metrics_known_values():
    m = compare.metrics(np.array([[1.0, 2.0], [3.0, 4.5]]), np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert m.rel_l2 == pytest.approx(0.5 / np.sqrt(30))
    assert m.max_abs == pytest.approx(0.5)
    assert m.worst_token == 1 and m.worst_index == [1, 1]
    assert (m.candidate_value, m.reference_value) == (4.5, 4.0)
    assert not m.non_finite


def test_nan_is_a_divergence_with_reason():
    ref = acts()
    cand = acts()
    cand[schema.key(0, 0, "layers.1.mlp_out")][1, 2] = np.nan
    floors = {k: 1e-7 for k in ref if not k.endswith("token_ids")}
    rows, first, _ = compare.compare(cand, ref, floors, "float32")
    assert first.tensor == "layers.1.mlp_out" and first.reason == "non-finite"


def test_first_divergence_follows_execution_order_not_name_order():
    ref = acts()
    # errors in layer 1 residual and layer 0 attn_out: layer 0 comes first although 'attn' < 'residual' anyway,
    # and layer 1 k_rot would sort before layer 0 residual by name
    cand = acts(perturb={"layers.0.mlp_out": 1.0, "layers.1.k_rot": 1.0})
    floors = {k: 1e-7 for k in ref if not k.endswith("token_ids")}
    rows, first, _ = compare.compare(cand, ref, floors, "float32")
    assert (first.tensor, first.layer, first.kind) == ("layers.0.mlp_out", 0, "mlp_out")
    verdicts = {r.tensor: r.verdict for r in rows}
    assert verdicts["layers.0.attn_out"] == "ok" and verdicts["layers.1.k_rot"] == "propagated"


def test_noise_below_the_band_passes_and_above_fails():
    ref = acts()
    floor = 1e-7
    floors = {k: floor for k in ref if not k.endswith("token_ids")}
    limit = tolerance.band(floor, "float32")
    for scale, expect in ((0.5, None), (2.0, "embed")):
        cand = {k: (v if k.endswith("token_ids") else v * (1 + scale * limit)) for k, v in ref.items()}
        _, first, _ = compare.compare(cand, ref, floors, "float32")
        assert (first.tensor if first else None) == expect


def test_different_decode_inputs_are_skipped_not_failed():
    ref = acts()
    cand = acts(ids=(1, 2, 4), perturb={"embed": 5.0})
    floors = {k: 1e-7 for k in ref if not k.endswith("token_ids")}
    rows, first, notes = compare.compare(cand, ref, floors, "float32")
    assert first is None and {r.verdict for r in rows} == {"skipped"} and notes


def test_a_prompt_is_not_compared_after_its_tokens_part_even_where_they_meet_again():
    """Found by a bf16 nightly: vLLM's and SGLang's greedy tokens parted at decode step 2 and agreed again at
    step 4, whose activations (over different contexts) were then compared and read as diverged."""
    def decoding(fed, seed):
        out = acts(seed=seed, tokens=1, ids=(7,))
        for step, token in enumerate(fed, start=1):
            out[schema.key(step, 0, schema.TOKEN_IDS)] = np.array([token])
            out[schema.key(step, 0, "embed")] = np.full((1, 8), float(step + seed))
        return out

    a, b = decoding((5, 6, 9, 4), seed=0), decoding((5, 8, 3, 4), seed=0)
    b[schema.key(4, 0, "embed")] = b[schema.key(4, 0, "embed")] + 1.0  # step 4: same token, another context
    floors = {k: 1e-7 for k in a if not k.endswith("token_ids")}
    rows, first, notes = compare.compare(a, b, floors, "float32")
    assert first is None, first
    assert [(r.step, r.verdict) for r in rows if r.tensor == "embed"] == \
        [(0, "ok"), (1, "ok"), (2, "skipped"), (3, "skipped"), (4, "skipped")]
    assert compare.parting_steps(a, b) == {0: 2}
    assert compare.floors(a, b)[schema.key(4, 0, "embed")] == float("inf")


def test_band_has_an_ulp_floor_for_exact_ops():
    assert tolerance.band(0.0, "float32") == pytest.approx(tolerance.FLOOR_FACTOR * tolerance.ULPS * 2**-24)
    with pytest.raises(ValueError, match="unknown dtype"):
        tolerance.band(0.0, "int8")


def routed(margin: float, pick: int, chosen: int = 1, token: list[float] | None = None,
           moved: list[float] | None = None, bias=None, weights_floor: float = 1e-7, logits_floor: float = 1e-7,
           elsewhere: float = 0.0):
    """Reference and candidate of one layer whose router chooses one of four experts; token 1's two best
    reference logits are ``margin`` apart (or its logits are ``token``), the reference chooses expert ``chosen``
    there (the best, or, as a correction bias may make it, another) and the candidate expert ``pick``, its logits
    there ``moved`` (by default the reference's, 1e-6 towards its pick), and token 0's first logit ``elsewhere``
    off the reference's, its choice the same."""
    ref = acts(layers=1)
    logits = np.array([[3.0, 0.0, 0.0, 0.0], token or [0.0, 2.0, 2.0 - margin, 0.0], [0.0, 0.0, 0.0, 3.0]])
    weights = np.zeros((3, 4))
    weights[[0, 1, 2], [0, chosen, 3]] = 1.0
    ref[schema.key(0, 0, "layers.0.router_logits")] = logits
    ref[schema.key(0, 0, "layers.0.expert_weights")] = weights
    cand = {k: v.copy() for k, v in ref.items()}
    cand[schema.key(0, 0, "layers.0.router_logits")][1] = moved or logits[1] + 1e-6 * (np.eye(4)[pick] - np.eye(4)[chosen])
    cand[schema.key(0, 0, "layers.0.router_logits")][0, 0] += elsewhere
    cand[schema.key(0, 0, "layers.0.expert_weights")][1] = np.eye(4)[pick]
    cand[schema.key(0, 0, "layers.0.mlp_out")][1] += 1.0  # the other expert's output, and all that follows
    cand[schema.key(0, 0, "layers.0.residual")][1] += 1.0
    floors = {k: 1e-7 for k in ref if not k.endswith("token_ids")}
    floors[schema.key(0, 0, "layers.0.expert_weights")] = weights_floor
    floors[schema.key(0, 0, "layers.0.router_logits")] = logits_floor
    return compare.compare(cand, ref, floors, "float32", routers=None if bias is None else {0: compare.Router(np.array(bias))})


def test_routing_on_a_near_tie_of_the_reference_is_not_a_divergence():
    rows, first, notes = routed(margin=1e-9, pick=2)
    assert first is None
    verdicts = {r.tensor: r.verdict for r in rows}
    assert verdicts["layers.0.router_logits"] == "ok"
    assert [verdicts[f"layers.0.{k}"] for k in ("expert_weights", "mlp_out", "residual")] == ["skipped"] * 3
    assert any("near-tie" in n and "layers.0.expert_weights" in n for n in notes)
    assert not any("decode inputs differ" in n for n in notes), "the prompt was fed the reference's tokens"


def test_routing_against_a_clear_margin_is_a_divergence():
    rows, first, _ = routed(margin=0.5, pick=2)
    assert (first.tensor, first.kind) == ("layers.0.expert_weights", "expert_weights")
    # Choosing an expert the reference ranks last is no near-tie whatever the margin of the first two.
    _, first, _ = routed(margin=1e-9, pick=3)
    assert first.tensor == "layers.0.expert_weights"


def test_routing_where_the_reference_chose_against_its_logits_order_is_a_divergence():
    """The reference chose the second-best logit (a correction bias moved it up); a candidate that chose by the
    logits alone, as an engine that drops the bias does, diverges: the logits' margin says nothing of that choice."""
    _, first, _ = routed(margin=0.5, pick=1, chosen=2)
    assert (first.tensor, first.kind) == ("layers.0.expert_weights", "expert_weights")


def test_a_tie_below_the_logits_rounding_is_a_near_tie_even_with_equal_logits():
    """An engine may choose from logits rounded otherwise than those it hands on (a softmax in another precision)."""
    assert routed(margin=1e-9, pick=2, moved=[0.0, 2.0, 2.0 - 1e-9, 0.0])[1] is None
    assert routed(margin=1e-5, pick=2, moved=[0.0, 2.0, 2.0 - 1e-5, 0.0])[1].tensor == "layers.0.expert_weights"


def test_routing_after_router_logits_out_of_their_band_is_no_near_tie():
    """Logits far off choose otherwise wherever they like: that is the divergence, not a near-tie after it."""
    rows, first, notes = routed(margin=1e-9, pick=2, moved=[0.0, 1.0, 3.0, 0.0])
    assert first.tensor == "layers.0.router_logits" and not any("near-tie" in n for n in notes)
    assert {r.tensor: r.verdict for r in rows}["layers.0.expert_weights"] == "propagated"


def test_a_near_tie_within_the_weights_band_still_ends_the_prompts_comparison():
    """A band the reference's own flips widened (bf16) may hold another choice: the MoE output after it is
    still no divergence."""
    rows, first, notes = routed(margin=1e-9, pick=2, weights_floor=1.0)
    assert first is None and any("near-tie" in n for n in notes)
    assert {r.tensor: r.verdict for r in rows}["layers.0.mlp_out"] == "skipped"


# GLM-4-MoE in bf16 (session 13's nightly, vLLM, layer 1): the reference chose expert 3, the lowest logit, by
# sigmoid(logits) + bias, 0.0036 above experts 2 and 1; the engine's logits, 0.0225 off at most, chose expert 2.
GLM4_MOE = dict(token=[0.8931, 0.5424, 0.9067, 0.4277], moved=[0.9156, 0.5238, 0.9052, 0.4104], chosen=3,
                logits_floor=1e-3)  # a bf16-wide band for the logits
GLM4_MOE_BIAS = [-0.10278, 0.01826, -0.06167, 0.04885]


def test_a_biased_routers_near_tie_is_judged_on_the_scores_it_chooses_by():
    _, first, notes = routed(0, pick=2, bias=GLM4_MOE_BIAS, **GLM4_MOE)
    assert first is None and any("near-tie" in n for n in notes)
    # Without the bias the choice is against the logits' order, no near-tie: a divergence.
    assert routed(0, pick=2, **GLM4_MOE)[1].tensor == "layers.0.expert_weights"
    # Expert 0, the best logit but 0.047 below on the scores, more than those logits' 0.0225 can move them.
    assert routed(0, pick=0, bias=GLM4_MOE_BIAS, **GLM4_MOE)[1].tensor == "layers.0.expert_weights"
    # The same swap by logits 0.004 off there (0.002 at most on the scores, under the 0.0036 gap) is no near-tie,
    # however far another token's logits moved.
    closer = dict(GLM4_MOE, moved=[x + 0.004 for x in GLM4_MOE["token"]], elsewhere=0.04)
    assert routed(0, pick=2, bias=GLM4_MOE_BIAS, **closer)[1].tensor == "layers.0.expert_weights"


def routing(logits: np.ndarray, renormalise: bool = True) -> np.ndarray:
    """Softmax routing weights of the top 3 of 8 experts, zero elsewhere."""
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    chosen = np.argsort(-logits, axis=-1)[:, :3]
    w = np.zeros_like(p)
    np.put_along_axis(w, chosen, np.take_along_axis(p, chosen, -1), -1)
    return w / w.sum(axis=-1, keepdims=True) if renormalise else w


def test_routing_weights_floor_is_what_the_router_logits_error_accounts_for():
    """vLLM's Qwen2-MoE, seen on a decode token: the fp32 reference's errors in the three chosen logits nearly
    agree, so its renormalised weights came out 9.7e-8 off fp64; the engine's logits, well inside their band, moved
    the weights by 1.3e-6, over 10x that measured floor. The floor is the logits' error carried through."""
    logits = np.array([[-0.47, 0.08, 0.28, -1.2, 1.19, 0.65, -0.33, 1.6]])
    exact = {schema.key(1, 0, schema.TOKEN_IDS): np.array([5]), schema.key(1, 0, "layers.0.router_logits"): logits,
             schema.key(1, 0, "layers.0.expert_weights"): routing(logits)}

    def run(dl: list[float], renormalise: bool = True) -> dict[str, np.ndarray]:
        moved = logits + np.array([dl])
        return {**exact, schema.key(1, 0, "layers.0.router_logits"): moved,
                schema.key(1, 0, "layers.0.expert_weights"): routing(moved, renormalise)}

    low = run([-6.6e-7, 1.9e-7, -8.8e-7, 6.2e-7, -0.6e-7, 1.4e-7, -3.3e-7, 1.2e-7])
    engine = run([-3.0e-7, -2.6e-7, -6.4e-7, -3.4e-7, 1.0e-6, 3.1e-7, 1.2e-6, -1.8e-6])
    weights = schema.key(1, 0, "layers.0.expert_weights")
    own = compare.metrics(low[weights], exact[weights]).rel_l2
    floors = compare.floors(low, exact)
    assert own < 1.2e-7 and floors[weights] == pytest.approx(2 * 8.8e-7, rel=1e-6)
    assert compare.metrics(engine[weights], exact[weights]).rel_l2 > tolerance.band(own, "float32")
    assert compare.compare(engine, exact, floors, "float32")[1] is None
    # Top-k renormalisation skipped (the bug zoo's M1) stays far outside the band.
    _, first, _ = compare.compare(run([0.0] * 8, renormalise=False), exact, floors, "float32")
    assert first.tensor == "layers.0.expert_weights" and first.rel_l2 > 1e4 * first.band


# GLM-4-MoE in bf16 (session 14's nightly, vLLM, layer 1): 8 experts in 4 groups of 2, the best 2 groups (by the sum
# of their two best sigmoid + bias scores) eligible, top 2 of them chosen.
GROUPED_LOGITS = np.array([[1.3617, -0.6537, 0.9194, -0.5587, 0.2437, 0.2103, -0.0278, -1.4956]])
GROUPED_MOVED = np.array([[1.3535, -0.6558, 0.9281, -0.5525, 0.2352, 0.2163, -0.0241, -1.5037]])  # 0.0087 off at most
GROUPED_BIAS = np.array([0.15011, 0.07209, 0.07438, -0.03912, 0.11512, 0.12078, 0.01609, 0.04618])


def _experts(*chosen):
    return np.isin(np.arange(8), chosen)[None].astype(float)


def test_a_near_tie_within_the_expert_groups_chosen_is_judged_among_them():
    """The reference chose experts 0 and 4 (groups 0 and 2), 4 over 5 by 0.0025; vLLM chose 0 and 5. Expert 2 scores
    above both (0.79 against 0.68) but its group was left out: by the scores alone the reference chose against their
    order, and the swap was read as a divergence of the MoE output (0.21 against 0.12)."""
    router = compare.Router(GROUPED_BIAS, groups=4, topk_groups=2)
    assert compare.ambiguous_routing(_experts(0, 5), _experts(0, 4), GROUPED_MOVED, GROUPED_LOGITS, router)
    assert not compare.ambiguous_routing(_experts(0, 5), _experts(0, 4), GROUPED_MOVED, GROUPED_LOGITS,
                                         compare.Router(GROUPED_BIAS))
    # expert 2 for 4 takes group 1 for group 2, whose sums are far apart (1.11 against 1.35): no near-tie
    assert not compare.ambiguous_routing(_experts(0, 2), _experts(0, 4), GROUPED_MOVED, GROUPED_LOGITS, router)


def test_a_near_tie_of_two_groups_sums_may_swap_experts_far_apart():
    """Expert 3's logit raised so that group 1's sum (1.3476) is 0.0013 under group 2's: logits 0.0087 off may choose
    group 1, and with it expert 2 for expert 4, although 4 and 2 are 0.11 apart."""
    logits = GROUPED_LOGITS.copy()
    logits[0, 3] = 0.3947
    router = compare.Router(GROUPED_BIAS, groups=4, topk_groups=2)
    assert compare.ambiguous_routing(_experts(0, 2), _experts(0, 4), logits + GROUPED_MOVED - GROUPED_LOGITS, logits,
                                     router)
    exact = logits + 1e-6 * np.sign(GROUPED_MOVED - GROUPED_LOGITS)  # the same, by logits 1e-6 off: no near-tie
    assert not compare.ambiguous_routing(_experts(0, 2), _experts(0, 4), exact, logits, router)

