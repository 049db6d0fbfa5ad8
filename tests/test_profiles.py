from datetime import date

from parity import profiles


def test_the_ci_seed_rotates_daily_and_the_others_are_random():
    ci = profiles.get("ci")
    assert ci.seed(date(2026, 11, 26)) == 20261126
    assert ci.seed(date(2026, 11, 27)) == 20261127
    assert profiles.get("nightly").seed(date(2026, 11, 26)) is None
