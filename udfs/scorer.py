"""ONNX scorer: runs the exported model with onnxruntime on whole batches of (user, item) rows;
ModelWatcher follows the registry's `current` pointer so a promoted model is picked up live."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)


def session_scores(session, x: np.ndarray) -> np.ndarray:
    """One score per row from an onnxruntime session: the positive-class probability of a
    classifier (a `probabilities` output, n x 2, as onnxmltools exports it), or the single column
    of a classifier's fast form (`probability`, models.onnx_form) or of a ranker. Only that output
    is asked for."""
    outputs = [o.name for o in session.get_outputs()]
    name = "probabilities" if "probabilities" in outputs else outputs[-1]
    # the job's matrices are float32 and C-contiguous already: no copy for them
    (out,) = session.run([name], {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)})
    out = np.asarray(out)
    return out[:, 1] if out.ndim == 2 and out.shape[1] == 2 else out.reshape(len(x))

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
    """Loads model.onnx once; `score` takes an (n, features) float32 matrix and returns one score
    per row: P(interact) for a classifier, the ranking score for a ranker."""
    def __init__(self, model_dir: str | Path, feature_names: tuple[str, ...]) -> None:
        model_dir = Path(model_dir)
        self.card = ModelCard.load(model_dir)
        if self.card.feature_names != tuple(feature_names):
            raise ModelError(
                f"model {self.card.version} expects features {list(self.card.feature_names)} but the job "
                f"config gives {list(feature_names)}; retrain with `streamrank train` using this config"
            )
        # one thread: Flink runs one Python worker per slot, and the slots share the cores. The other
        # session options (optimization level, execution mode, memory arena and pattern, spinning)
        # made no difference beyond noise for a tree ensemble (README, bench.scoring).
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(model_dir / "model.onnx"), opts, providers=["CPUExecutionProvider"]
        )
        # the LightGBM model the ONNX one was exported from, for TreeSHAP contributions (reasons)
        self.booster_file = model_dir / "model.txt"
        self._booster = None

    @property
    def explains(self) -> bool:
        """Whether contributions() can explain this model's scores: its LightGBM file was published
        and LightGBM is installed (the train extra; the job's own extra leaves it out)."""
        return self.booster_file.is_file() and importlib.util.find_spec("lightgbm") is not None

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """LightGBM's TreeSHAP contributions per row (features, then the bias), in raw-score units."""
        if self._booster is None:
            import lightgbm  # only a job that explains loads it (seconds of import)
            self._booster = lightgbm.Booster(model_file=str(self.booster_file))
        return np.asarray(self._booster.predict(np.asarray(x, dtype=np.float64), pred_contrib=True, num_threads=1))

    @property
    def version(self) -> str:
        return self.card.version

    def score(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros(0, dtype=np.float32)
        return session_scores(self.session, x)

    def current(self) -> OnnxScorer:
        return self

    def pinned(self, version: str) -> OnnxScorer:
        """A lone model has no registry beside it: it scores every arm."""
        return self


class ModelWatcher:
    """The model at `model_dir` (the registry's `current` symlink), re-resolved at most every
    `check_s` seconds: when it points at another version, that version is loaded and used from
    the next batch on. A version that cannot be used (missing files, other features) is logged
    and skipped; the loaded model keeps scoring."""
    def __init__(self, model_dir: str | Path, feature_names: tuple[str, ...], check_s: float = 5.0) -> None:
        self.model_dir = Path(model_dir)
        self.feature_names = tuple(feature_names)
        self.check_s = check_s
        self.target = self._resolve()
        self.scorer = OnnxScorer(self.target, self.feature_names)
        self.refused: Path | None = None
        self.checked_at = time.monotonic()
        self.versions: dict[str, OnnxScorer] = {}  # pinned versions, by name
        self.unusable: dict[str, float] = {}  # pinned versions that did not load, and when they last failed

    def _resolve(self) -> Path:
        return Path(os.path.realpath(self.model_dir))

    def current(self) -> OnnxScorer:
        now = time.monotonic()
        if self.check_s <= 0 or now - self.checked_at < self.check_s:
            return self.scorer
        self.checked_at = now
        target = self._resolve()
        if target == self.target or target == self.refused:
            return self.scorer
        try:
            scorer = OnnxScorer(target, self.feature_names)
        except Exception as e:  # ModelError, OSError, or onnxruntime's own types for a broken model.onnx
            log.error("model at %s not loaded, still scoring with %s: %s", target, self.scorer.version, e)
            self.refused = target
            return self.scorer
        log.info("model switched %s -> %s (%s)", self.scorer.version, scorer.version, target)
        self.scorer, self.target, self.refused = scorer, target, None
        return self.scorer

    def pinned(self, version: str) -> OnnxScorer:
        """A registry version beside `current` (an experiment arm's model_version), loaded once. A
        version that cannot be loaded is logged once and the current model scores instead (the
        list records the version that scored it); it is tried again every `check_s`, so a version
        published after the experiment was applied is picked up."""
        if version in self.versions:
            return self.versions[version]
        now = time.monotonic()
        failed_at = self.unusable.get(version)
        if failed_at is None or (self.check_s > 0 and now - failed_at >= self.check_s):
            try:
                self.versions[version] = OnnxScorer(Path(os.path.realpath(self.model_dir.parent / version)),
                                                    self.feature_names)
                if failed_at is not None:
                    log.info("model %s (an experiment arm's model_version) loaded; it scores its arm from now on",
                             version)
                    del self.unusable[version]
                return self.versions[version]
            except Exception as e:  # as in current(): a missing or unusable version
                if failed_at is None:
                    log.error("model %s (an experiment arm's model_version) not loaded, scoring with the current "
                              "model instead (tried again every %.0f s): %s", version, self.check_s, e)
                self.unusable[version] = now
        return self.current()

    @property
    def version(self) -> str:
        return self.scorer.version

    def score(self, x: np.ndarray) -> np.ndarray:
        return self.scorer.score(x)
