"""Hypothesis fuzz targets for the parsers that read what others send or write.

`make test` runs each target briefly (profile "fuzz-quick"); `make fuzz` sets
HYPOTHESIS_PROFILE=fuzz for a long run. The profile applies to these targets only, through the
`fuzz` decorator, so the property tests elsewhere keep their own settings.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fuzz-quick", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "fuzz-quick")
# The fuzz targets' settings: the profile named by HYPOTHESIS_PROFILE if it is one of ours.
fuzz = settings.get_profile(PROFILE if PROFILE.startswith("fuzz") else "fuzz-quick")
