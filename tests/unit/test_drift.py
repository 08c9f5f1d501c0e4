"""Population stability index against a model card's reference distributions."""

import numpy as np

from models.training import reference_distributions
from udfs.drift import DriftMonitor, bin_counts, psi


def card_for(x, names):
    return {"version": "v0042", "reference_distributions": reference_distributions(x, names)}


def test_psi_is_zero_for_the_reference_and_grows_with_shift():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20000, 1))
    d = reference_distributions(ref, ["f"])["f"]
    edges = np.asarray(d["edges"])
    same = psi(bin_counts(rng.normal(size=20000), edges), d["shares"])
    small = psi(bin_counts(rng.normal(0.2, 1, size=20000), edges), d["shares"])
    large = psi(bin_counts(rng.normal(1.5, 1, size=20000), edges), d["shares"])
    assert same < 0.01 < small < 0.25 < large


def test_psi_by_hand():
    # live (0.5, 0.5) against reference (0.25, 0.75): 0.25*ln2 + (-0.25)*ln(2/3)
    assert abs(psi(np.array([5, 5]), [0.25, 0.75]) - (0.25 * np.log(2) - 0.25 * np.log(2 / 3))) < 1e-12


def test_monitor_reports_per_window_and_alerts_on_the_shifted_feature():
    rng = np.random.default_rng(1)
    names = ("stable", "shifting")
    monitor = DriftMonitor(card_for(rng.normal(size=(10000, 2)), names), names, window_s=60, min_rows=500,
                           threshold=0.25)
    assert monitor.observe(rng.normal(size=(400, 2)), 0) is None  # window still open
    assert monitor.observe(rng.normal(size=(400, 2)), 30_000) is None
    report = monitor.observe(rng.normal(size=(400, 2)), 60_000)
    assert report is not None and report.rows == 1200 and not report.alert
    shifted = rng.normal(size=(2000, 2))
    shifted[:, 1] += 2.0
    assert monitor.observe(shifted, 90_000) is None
    report = monitor.observe(shifted, 120_000)
    assert report.alert and report.max_feature == "shifting" and report.psi["stable"] < 0.1
    assert (report.window_start_ms, report.window_end_ms, report.model_version) == (60_000, 120_000, "v0042")


def test_small_windows_are_merged_not_reported():
    rng = np.random.default_rng(2)
    names = ("f",)
    monitor = DriftMonitor(card_for(rng.normal(size=(1000, 1)), names), names, window_s=1, min_rows=300, threshold=0.25)
    assert monitor.observe(rng.normal(size=(100, 1)), 0) is None
    assert monitor.observe(rng.normal(size=(100, 1)), 5_000) is None  # window over, too few rows
    assert monitor.observe(rng.normal(size=(100, 1)), 6_000).rows == 300


def test_one_batch_spanning_the_window_closes_it():
    rng = np.random.default_rng(3)
    names = ("f",)
    monitor = DriftMonitor(card_for(rng.normal(size=(1000, 1)), names), names, window_s=30, min_rows=10, threshold=0.25)
    report = monitor.observe(rng.normal(size=(500, 1)), 0, 150_000)
    assert report is not None and (report.window_start_ms, report.window_end_ms) == (0, 150_000)
