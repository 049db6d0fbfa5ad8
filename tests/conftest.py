import os

from hypothesis import settings

# Unit tests of parity's own pure code: fast Hypothesis runs, profile chosen like parity's.
settings.register_profile("unit-ci", max_examples=50, deadline=None, derandomize=True)
settings.register_profile("unit-dev", max_examples=20, deadline=None)
settings.load_profile("unit-ci" if os.environ.get("CI") else "unit-dev")
