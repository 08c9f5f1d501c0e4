"""A short fuzzing campaign in process (bench.fuzz runs the long one): generated records through
Python's validator, generated config files through both loaders, generated requests through the
lookup rules. Each surface must end with inputs counted and nothing but the defined answers
(InvalidEvent, ConfigError, InvalidRequest)."""

from __future__ import annotations

import pytest

from bench import fuzz


@pytest.mark.parametrize("surface", ["validation", "config", "lookup_core"])
def test_short_campaign_finds_no_crash(surface):
    report = fuzz.run_campaign((surface,), seconds=60, max_inputs=400, hang_s=5, with_job=False)[surface]
    assert report["inputs"] >= 100, report
    assert (report["crashes"], report["server_errors"], report["hangs"]) == (0, 0, 0), report


def test_the_campaign_counts_what_escapes():
    """The tally is not a formality: a validator that raises something else is counted as a crash."""
    tally = fuzz.Tally()
    good = b'{"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "view", "ts": %d}' % (fuzz.NOW - 1000)
    assert fuzz.python_reason(good, tally) is None
    assert fuzz.python_reason(good.replace(b'"u1"', b"7"), tally) == "bad_user_id" and tally.crashes == 0
    assert fuzz.python_reason(object(), tally) == "<crash>" and tally.crashes == 1  # not bytes: TypeError
