"""The classifier's fast ONNX form and the ranking gate it passes before it is published."""

import numpy as np
import onnx
from onnx import helper
import pytest

from contract.config import load_config
from models.onnx_form import MIN_KENDALL_TAU, MIN_TOP_OVERLAP, ranking_parity, single_target_form
from models.training import (PARITY_TOLERANCE, PublishRefused, TrainingSet, check_ranking_parity, export_onnx,
                             fit_and_export, fit_model, onnx_scores, parity)
from tests.unit.conftest import FEATURE_NAMES

LISTS, PER_LIST = 60, 40


def rows(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
    y = (x[:, 1] + x[:, 5] * x[:, 7] + rng.normal(scale=0.7, size=n) > 0.8).astype(int)
    return x, y


@pytest.fixture(scope="module")
def classifier():
    """A LightGBM classifier, its export and held-out candidate lists: (model, export, x, lists)."""
    x, y = rows(3, 4000)
    model, _ = fit_model("classifier", x, y, np.repeat(np.arange(100), 40), max_trees=120)
    held, _ = rows(4, LISTS * PER_LIST)
    return model, export_onnx(model, x.shape[1])[0], held, np.repeat(np.arange(LISTS), PER_LIST)


def first_trees(onnx_bytes: bytes, share: float) -> bytes:
    """The model with only the first `share` of its trees: a degraded stand-in for a lossy form."""
    onx = onnx.load_from_string(onnx_bytes)
    node = next(n for n in onx.graph.node if n.op_type.startswith("TreeEnsemble"))
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    keep = int((max(attrs["nodes_treeids"]) + 1) * share)
    for prefix, trees in (("nodes_", "nodes_treeids"), ("target_", "target_treeids")):
        kept = [t < keep for t in attrs[trees]]
        for name in [k for k in attrs if k.startswith(prefix)]:
            attrs[name] = [v for v, k in zip(attrs[name], kept) if k]
    del node.attribute[:]
    node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    return onx.SerializeToString()


def test_fast_form_is_a_single_target_ensemble_scoring_as_the_export(classifier):
    model, exported, x, _ = classifier
    fast = single_target_form(exported)
    assert [n.op_type for n in onnx.load_from_string(fast).graph.node] == ["TreeEnsembleRegressor", "Sigmoid"]
    assert np.max(np.abs(onnx_scores(fast, x) - onnx_scores(exported, x))) <= 1e-6
    assert parity(model, fast, x) <= PARITY_TOLERANCE


def test_ranking_gate_passes_the_fast_form(classifier):
    _, exported, x, lists = classifier
    ranked = check_ranking_parity(exported, single_target_form(exported), x, lists)
    assert ranked.lists == LISTS and ranked.top10_overlap == 1.0 and ranked.kendall_tau >= MIN_KENDALL_TAU


def test_ranking_gate_refuses_a_model_with_half_its_trees(classifier):
    _, exported, x, lists = classifier
    half = first_trees(single_target_form(exported), 0.5)
    ranked = ranking_parity(onnx_scores(exported, x), onnx_scores(half, x), lists)
    assert ranked.top10_overlap < MIN_TOP_OVERLAP and ranked.kendall_tau < MIN_KENDALL_TAU
    with pytest.raises(PublishRefused, match=r"top-10 overlap 0\.\d+ \(needs >= 0\.98\), Kendall tau 0\.\d+ "
                                             r"\(needs >= 0\.99\).*training\.onnx_form = \"exported\""):
        check_ranking_parity(exported, half, x, lists)


def test_models_without_a_faster_form_are_left_as_exported(trained):
    x, y = rows(5, 2000)
    ranker, _ = fit_model("lambdamart", x, y, np.repeat(np.arange(100), 20), max_trees=20)
    assert single_target_form(export_onnx(ranker, x.shape[1])[0]) is None  # single-target already
    assert single_target_form(trained[1]) is None  # skl2onnx's classifier carries base values


def test_ranking_parity_per_list_averaged():
    want = np.array([5.0, 4, 3, 2, 1, 1.0, 2, 3])
    lists = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    assert ranking_parity(want, want, lists) == ranking_parity(want * 2 + 1, want, lists)
    same = ranking_parity(want, want, lists)
    assert (same.top10_overlap, same.kendall_tau, same.lists) == (1.0, 1.0, 2)
    reversed_first = np.r_[-want[:5], want[5:]]  # list 0 upside down, list 1 unchanged
    assert ranking_parity(want, reversed_first, lists).kendall_tau == pytest.approx(0.0)  # (-1 + 1) / 2


def test_ranking_parity_lets_ties_of_the_reference_be_broken_but_not_its_order_tied():
    one = np.zeros(3)
    broken = ranking_parity(np.array([1.0, 0, 0]), np.array([3.0, 2, 1]), one)  # got orders want's tie
    assert (broken.top10_overlap, broken.kendall_tau) == (1.0, 1.0)
    tied = ranking_parity(np.array([3.0, 2, 1]), np.array([1.0, 0, 0]), one)  # got ties 1 of want's 3 pairs
    assert tied.kendall_tau == pytest.approx(2 / 3)
    flat = ranking_parity(np.ones(3), np.arange(3.0), one)  # no order to keep: left out of tau
    assert (flat.top10_overlap, flat.kendall_tau) == (1.0, 1.0)
    # three candidates tied at want's 10th score: got may take any of them into its top 10
    want = np.r_[np.arange(20.0, 11, -1), 5.0, 5.0, 5.0, 1.0]
    got = want.copy()
    got[11] = 5.5
    assert ranking_parity(want, got, np.zeros(13)).top10_overlap == 1.0
    got[12] = 30.0  # but not the last one
    assert ranking_parity(want, got, np.zeros(13)).top10_overlap == 0.9


def test_training_publishes_the_fast_form_unless_the_config_asks_for_the_export():
    x, y = rows(6, 3000)
    cutoff = np.repeat(np.arange(5) * 1000, 600)  # five cut-offs: the last is the validation one
    ts = TrainingSet(x, y, cutoff, np.repeat(np.arange(75), 40), 75, 0, 5000)
    cfg = load_config(None)
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"max_trees": 40})})
    fast = fit_and_export(ts, cfg, "classifier", progress=False)
    assert fast.card["onnx_form"]["form"].startswith("single-target")
    assert fast.card["onnx_form"]["against_export"]["top10_overlap"] == 1.0
    assert fast.card["onnx_parity_max_diff"] <= PARITY_TOLERANCE
    assert [n.op_type for n in onnx.load_from_string(fast.onnx).graph.node][-1] == "Sigmoid"
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"onnx_form": "exported"})})
    exported = fit_and_export(ts, cfg, "classifier", progress=False)
    assert exported.card["onnx_form"] == {"form": "onnxmltools' export"}
    assert [n.op_type for n in onnx.load_from_string(exported.onnx).graph.node][0] == "TreeEnsembleClassifier"
