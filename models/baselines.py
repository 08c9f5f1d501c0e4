"""The baselines as rankers the registry knows and the job serves like a model.

A baseline is a fixed linear score over the job's own features, exported as a one-node ONNX
graph (MatMul), so it goes through the same registry, promotion, rollback and scorer as a trained
model. The job can then fall back to "buy again" as deliberately as it ships a model:

- `repeat`: the user's own items first, by purchase occasions, then by decayed interaction weight
  (the longest memory half-life), then the rest by long-term popularity;
- `trending`: short-term popularity (the job's trending boards).

The weights are udfs.arms.baseline_weights: experiment arms rank with them in the job directly.
They approximate models.evaluation.Baselines (which count raw events over the training part) with
the features the job keeps; `evaluate` keeps scoring the exact baselines."""

from __future__ import annotations

import time
from pathlib import Path

import onnx
from onnx import TensorProto, helper, numpy_helper

from contract.config import FeatureConfig
from models.registry import Registry
from udfs.arms import baseline_weights
from udfs.features import feature_names

def export_baseline(kind: str, cfg: FeatureConfig) -> bytes:
    """The baseline as an ONNX graph: features (n, f) float32 -> score (n, 1)."""
    w = baseline_weights(kind, cfg).reshape(-1, 1)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "weights"], ["score"])], f"baseline_{kind}",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, len(w)])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(w, "weights")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # onnxruntime 1.2x reads IR 8 and newer
    onnx.checker.check_model(model)
    return model.SerializeToString()


def publish_baseline(kind: str, registry: str | Path, cfg: FeatureConfig, promote: bool = False) -> Path:
    """Publish the baseline as a registry version (not promoted unless asked)."""
    names = feature_names(cfg)
    weights = baseline_weights(kind, cfg)
    card = {
        "kind": f"baseline:{kind}",
        "model": f"baseline {kind}: a fixed linear score "
                 + " + ".join(f"{w:g} x {n}" for n, w in zip(names, weights) if w),
        "score": "ranking score (higher ranks first)",
        "feature_names": list(names),
        "opset": 17,
        "holdout": {},
        "features_config": cfg.model_dump(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return Registry(registry).publish({"model.onnx": export_baseline(kind, cfg)}, card, promote=promote)
