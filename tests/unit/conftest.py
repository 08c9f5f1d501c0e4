"""Fixtures of the unit tier."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier

from contract.config import FeatureConfig
from models.training import export_onnx
from udfs.features import feature_names

FEATURE_NAMES = feature_names(FeatureConfig())


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A scikit-learn model on random features, exported to ONNX: (model, onnx bytes, model dir, x)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, len(FEATURE_NAMES))).astype(np.float32)
    y = (x[:, 0] + x[:, 3] * x[:, 5] + rng.normal(scale=0.5, size=2000) > 0).astype(int)
    model = GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0).fit(x, y)
    onnx_bytes, _ = export_onnx(model, x.shape[1])
    d = tmp_path_factory.mktemp("model")
    (d / "model.onnx").write_bytes(onnx_bytes)
    (d / "card.json").write_text(json.dumps({"version": "vtest", "feature_names": list(FEATURE_NAMES)}))
    return model, onnx_bytes, d, x
