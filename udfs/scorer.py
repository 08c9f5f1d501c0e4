"""ONNX scorer: runs the exported model with onnxruntime on whole batches of (user, item) rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np



class ModelError(RuntimeError):
    """A model directory that cannot be used for scoring; the message says what to fix."""


@dataclass(frozen=True)
class ModelCard:
    version: str
    feature_names: tuple[str, ...]
    raw: dict

    @staticmethod
    def load(model_dir: Path) -> ModelCard:
        path = model_dir / "card.json"
        if not path.exists():
            raise ModelError(f"no model card at {path}; train one with `streamrank train`")
        raw = json.loads(path.read_text())
        return ModelCard(str(raw["version"]), tuple(raw["feature_names"]), raw)


class OnnxScorer:
    """Loads model.onnx once; `score` takes an (n, features) float32 matrix, returns P(interact)."""

    def __init__(self, model_dir: str | Path, feature_names: tuple[str, ...]) -> None:
        import onnxruntime as ort

        model_dir = Path(model_dir)
        self.card = ModelCard.load(model_dir)
        if self.card.feature_names != tuple(feature_names):
            raise ModelError(
                f"model {self.card.version} expects features {list(self.card.feature_names)} but the job "
                f"config gives {list(feature_names)}; retrain with `streamrank train` using this config"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self.prob_output = "probabilities" if "probabilities" in outputs else outputs[-1]

    @property
    def version(self) -> str:
        return self.card.version

    def score(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros(0, dtype=np.float32)
        (probs,) = self.session.run([self.prob_output], {self.input_name: x.astype(np.float32)})
        return np.asarray(probs)[:, 1]
