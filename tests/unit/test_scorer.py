import json

import numpy as np
import pytest

from models.training import PARITY_TOLERANCE, export_onnx, parity
from contract.config import FeatureConfig
from udfs.features import feature_names
from udfs.scorer import ModelError, OnnxScorer

FEATURE_NAMES = feature_names(FeatureConfig())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, len(FEATURE_NAMES))).astype(np.float32)
    y = (x[:, 0] + x[:, 3] * x[:, 5] + rng.normal(scale=0.5, size=2000) > 0).astype(int)
    model = GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0).fit(x, y)
    onnx_bytes, _ = export_onnx(model, x.shape[1])
    d = tmp_path_factory.mktemp("model")
    (d / "model.onnx").write_bytes(onnx_bytes)
    (d / "card.json").write_text(json.dumps({"version": "vtest", "feature_names": list(FEATURE_NAMES)}))
    return model, onnx_bytes, d, x


def test_onnx_scores_equal_scikit_learn(trained):
    model, onnx_bytes, d, x = trained
    scorer = OnnxScorer(d, FEATURE_NAMES)
    got = scorer.score(x[:500])
    want = model.predict_proba(x[:500])[:, 1]
    assert np.max(np.abs(got - want)) <= PARITY_TOLERANCE
    assert parity(model, onnx_bytes, x[:500]) <= PARITY_TOLERANCE
    assert scorer.version == "vtest"


def test_empty_batch_scores_nothing(trained):
    assert OnnxScorer(trained[2], FEATURE_NAMES).score(np.zeros((0, len(FEATURE_NAMES)), np.float32)).shape == (0,)


def test_scorer_refuses_model_with_other_features(trained, tmp_path):
    _, onnx_bytes, _, _ = trained
    (tmp_path / "model.onnx").write_bytes(onnx_bytes)
    (tmp_path / "card.json").write_text(json.dumps({"version": "v9", "feature_names": ["a", "b"]}))
    with pytest.raises(ModelError, match="retrain"):
        OnnxScorer(tmp_path, FEATURE_NAMES)


def test_missing_card_says_how_to_fix(tmp_path):
    with pytest.raises(ModelError, match="streamrank train"):
        OnnxScorer(tmp_path, FEATURE_NAMES)
