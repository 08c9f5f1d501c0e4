"""The faster ONNX form of an exported model, and how closely two models rank the same lists.

onnxmltools exports a binary LightGBM classifier as a two-class TreeEnsembleClassifier:
onnxruntime then keeps a score per class for every row and tree (its multi-class path) and writes
a label nobody reads. The same trees as a single-target TreeEnsembleRegressor (the log-odds)
followed by a Sigmoid give the same probability, float32 rounding apart, in about 1/1.2 of the
time on one thread (`python -m bench.scoring`). The regressor's own post_transform cannot do it:
onnxruntime applies only PROBIT to a single target and ignores LOGISTIC.

A ranker is exported as a single-target regressor already, so it has no faster form here. What
else was measured and left out is in the README (Benchmarks, bench.scoring)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper
from scipy.stats import somersd

TOP_K = 10
MIN_TOP_OVERLAP = 0.98
MIN_KENDALL_TAU = 0.99

# attributes that carry over unchanged from TreeEnsembleClassifier to TreeEnsembleRegressor
TREE_ATTRIBUTES = ("nodes_falsenodeids", "nodes_featureids", "nodes_hitrates", "nodes_missing_value_tracks_true",
                   "nodes_modes", "nodes_nodeids", "nodes_treeids", "nodes_truenodeids", "nodes_values")


def single_target_form(onnx_bytes: bytes) -> bytes | None:
    """A binary classifier's trees as TreeEnsembleRegressor (log-odds) -> Sigmoid, one output
    `probability` (n x 1, P(class 1)), or None when the model is not onnxmltools' form of a binary
    LightGBM classifier (a two-label TreeEnsembleClassifier, LOGISTIC, every leaf voting for
    class 0 with its log-odds, no base values)."""
    onx = onnx.load_from_string(onnx_bytes)
    ensembles = [n for n in onx.graph.node if n.op_type.startswith("TreeEnsemble")]
    if len(ensembles) != 1 or ensembles[0].op_type != "TreeEnsembleClassifier":
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in ensembles[0].attribute}
    if (list(attrs.get("classlabels_int64s", [])) != [0, 1] or attrs.get("post_transform") != b"LOGISTIC"
            or set(attrs["class_ids"]) != {0} or attrs.get("base_values")
            or set(attrs) - set(TREE_ATTRIBUTES) - {"classlabels_int64s", "post_transform", "class_ids",
                                                     "class_nodeids", "class_treeids", "class_weights"}):
        return None
    trees = helper.make_node(
        "TreeEnsembleRegressor", [onx.graph.input[0].name], ["log_odds"], domain="ai.onnx.ml", n_targets=1,
        aggregate_function="SUM", post_transform="NONE", **{k: attrs[k] for k in TREE_ATTRIBUTES if k in attrs},
        target_ids=attrs["class_ids"], target_nodeids=attrs["class_nodeids"], target_treeids=attrs["class_treeids"],
        target_weights=attrs["class_weights"])
    graph = helper.make_graph(
        [trees, helper.make_node("Sigmoid", ["log_odds"], ["probability"])], "single_target", [onx.graph.input[0]],
        [helper.make_tensor_value_info("probability", onnx.TensorProto.FLOAT, [None, 1])])
    out = helper.make_model(graph, opset_imports=onx.opset_import, ir_version=onx.ir_version,
                            producer_name="streamrank", doc_string="single-target form of " + onx.producer_name)
    onnx.checker.check_model(out)
    return out.SerializeToString()


@dataclass(frozen=True)
class RankingParity:
    """How closely one model orders lists as another does (ranking_parity)."""
    top10_overlap: float
    kendall_tau: float
    lists: int

    def holds(self) -> bool:
        return self.top10_overlap >= MIN_TOP_OVERLAP and self.kendall_tau >= MIN_KENDALL_TAU


def ranking_parity(want: np.ndarray, got: np.ndarray, lists: np.ndarray) -> RankingParity:
    """How well `got` keeps the order `want` gives each list. want, got: two models' scores of the
    same rows; lists: per row, which candidate list it belongs to (a list's rows contiguous).

    Per list, averaged over the lists:
    - top-10 overlap: the share of got's top min(10, list length) that want ranks in its own top
      10 as well, a row tied with want's 10th score counting as in it;
    - Kendall's tau over the pairs want orders: (concordant - discordant) / pairs not tied in
      want, i.e. Somers' D of got given want. It is Kendall's tau when neither has ties; a tie
      want has and got breaks costs nothing (the job breaks it by row order anyway), a pair want
      orders and got ties counts against. A list whose rows want scores all alike has no order
      to keep and is left out of this average.
    The exported classifier has such ties of its own: where LightGBM's probabilities were ~4e-8
    (the unit tests' loyal world), onnxruntime's TreeEnsembleClassifier gave 0 for every row and
    the fast form's Sigmoid still told some apart."""
    if not len(lists):
        return RankingParity(1.0, 1.0, 0)
    starts = np.flatnonzero(np.r_[True, lists[1:] != lists[:-1]])
    overlaps, taus = [], []
    for a, b in zip(starts, np.r_[starts[1:], len(lists)]):
        w, g = want[a:b], got[a:b]
        k = min(TOP_K, b - a)
        kth = np.sort(w)[-k]
        overlaps.append(float(np.sum(w[np.argsort(-g, kind="stable")[:k]] >= kth)) / k)
        if np.ptp(w) > 0:
            taus.append(float(somersd(w, g).statistic))
    return RankingParity(float(np.mean(overlaps)), float(np.mean(taus)) if taus else 1.0, len(starts))
