"""Point-in-time training set -> a model (gradient-boosting classifier or LambdaMART ranker) ->
ONNX (parity-checked) -> registry.

For sampled (user, window end) cut-offs from the offline replay, candidates come from the same
generator the job uses; the label says whether the user interacts with the item within
`horizon_s` after the cut-off. The last quarter of cut-offs (by time) is the holdout.

Two kinds of model, both exported to ONNX and checked against the trained model before publishing:
- `gbc`: scikit-learn's GradientBoostingClassifier, P(interact) per (user, item) row;
- `lambdamart`: LightGBM's LGBMRanker (objective lambdarank), trained on each (user, cut-off)
  candidate list as one query, so it optimizes the order within a list (NDCG) directly; its score
  is a ranking score, not a probability. LightGBM is the maintained LambdaMART implementation with
  an ONNX converter (onnxmltools); scikit-learn has no learning-to-rank model."""

from __future__ import annotations

import logging
import random
import time
from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from contract.config import JobConfig
from models.offline import OfflineReplay, load_catalog, read_history
from udfs.candidates import gather_candidates
from udfs.features import feature_names, user_item_matrix

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-5


class PublishRefused(RuntimeError):
    """The exported model does not behave like the trained one; nothing was published."""


@dataclass
class TrainingSet:
    x: np.ndarray
    y: np.ndarray
    cutoff: np.ndarray  # ms, per row
    query: np.ndarray  # per row: which (user, cut-off) candidate list it belongs to (contiguous)
    users: int
    start_ms: int
    end_ms: int
    replay: OfflineReplay | None = None  # with replay_to_end: the state after the whole history


def build_training_set(
    history: str | Path, cfg: JobConfig, horizon_s: float = 1800.0, sample: float = 0.3,
    negatives_per_cutoff: int = 20, seed: int = 0, catalog: str | Path | None = None,
    progress: bool = True, replay_to_end: bool = False,
) -> TrainingSet:
    """replay_to_end: keep folding the windows past the last labelled cut-off and return the
    replay (what the job would hold at the end of the history), so a caller does not replay the
    same file again."""
    hist = read_history(history, cfg)
    events = hist.events
    if hist.rejected:
        log.warning("%d history lines rejected (first: line %d, %s)", len(hist.rejected), *hist.rejected[0])
    if hist.late:
        log.warning("%d history lines late (first: line %d)", len(hist.late), hist.late[0])
    if not events:
        raise ValueError(f"{history} holds no valid events")
    future: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for e in events:
        future[e.user_id].append((e.ts, e.item_id))
    future_ts = {u: [t for t, _ in v] for u, v in future.items()}
    horizon_ms = int(horizon_s * 1000)
    last_ts = events[-1].ts
    rng = random.Random(seed)
    replay = OfflineReplay(cfg)
    if catalog:
        replay.catalog.update(load_catalog(catalog))
    c = cfg.candidates
    xs: list[np.ndarray] = []
    ys: list[int] = []
    cuts: list[int] = []
    queries: list[int] = []
    windows = len({e.ts - e.ts % replay.mb_ms for e in events})
    for step in tqdm(replay.run(events), total=windows, desc="replaying windows", disable=not progress, unit="win"):
        t = step.window_end
        if t + horizon_ms > last_ts:
            if not replay_to_end:
                break  # labels would be cut short
            continue
        sampled = [u for u in step.active_users if rng.random() < sample]
        if not sampled:
            continue
        pool = replay.candidate_pool()
        for user in sampled:
            state = replay.states[user]
            cands = gather_candidates(state, pool, c.top_categories, c.own_history)
            ts_list = future_ts[user]
            lo, hi = bisect_right(ts_list, t), bisect_right(ts_list, t + horizon_ms)
            positives = {item for _, item in future[user][lo:hi]}
            pos = [cd for cd in cands if cd.item_id in positives]
            neg = [cd for cd in cands if cd.item_id not in positives]
            neg = rng.sample(neg, min(len(neg), negatives_per_cutoff))
            chosen = pos + neg
            if not chosen:
                continue
            xs.append(user_item_matrix(state, t, cfg.features, chosen))
            ys += [1] * len(pos) + [0] * len(neg)
            cuts += [t] * len(chosen)
            queries += [len(xs) - 1] * len(chosen)
    if not xs or len(set(ys)) < 2:
        raise ValueError("history too short to build a training set with both labels; simulate more events")
    return TrainingSet(np.concatenate(xs), np.asarray(ys), np.asarray(cuts), np.asarray(queries),
                       len(replay.states), events[0].ts, last_ts, replay if replay_to_end else None)


MODEL_KINDS = ("gbc", "lambdamart")


def fit_model(kind: str, x: np.ndarray, y: np.ndarray, query: np.ndarray, seed: int = 0):
    """Fit one kind of model on rows whose queries are contiguous; returns (model, description).
    Fitted on float32 features, as the job scores them: split thresholds then fall between values
    the ONNX model (float32 thresholds) sees the same way."""
    x = x.astype(np.float32)
    if kind == "gbc":
        from sklearn.ensemble import GradientBoostingClassifier

        model = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=seed)
        model.fit(x, y)
        return model, "GradientBoostingClassifier(n_estimators=100, max_depth=3)"
    if kind == "lambdamart":
        import lightgbm as lgb

        _, sizes = np.unique(query, return_counts=True)  # np.unique sorts; queries are ascending
        model = lgb.LGBMRanker(n_estimators=200, num_leaves=15, learning_rate=0.05, min_child_samples=20,
                               subsample=0.8, subsample_freq=1, colsample_bytree=0.9,
                               importance_type="gain", random_state=seed, n_jobs=1, verbose=-1)
        model.fit(x, y, group=sizes)
        return model, "LightGBM LGBMRanker(objective=lambdarank, n_estimators=200, num_leaves=15)"
    raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")


def model_scores(model, x: np.ndarray) -> np.ndarray:
    """What the exported ONNX model must reproduce: P(interact) or the ranking score."""
    x = x.astype(np.float32)
    return model.predict_proba(x)[:, 1] if hasattr(model, "predict_proba") else model.predict(x)


def train_and_publish(ts: TrainingSet, registry: str | Path, cfg: JobConfig, seed: int = 0,
                      kind: str = "gbc", promote: bool = True) -> Path:
    from sklearn.metrics import roc_auc_score

    from models.registry import Registry

    order = np.argsort(ts.cutoff, kind="stable")
    split = int(len(order) * 0.75)
    split_time = ts.cutoff[order[split]]
    train = ts.cutoff < split_time
    hold = ~train
    if hold.sum() == 0 or len(set(ts.y[hold])) < 2 or len(set(ts.y[train])) < 2:
        raise ValueError("time split left one side without both labels; simulate more events")
    with tqdm(total=1, desc=f"training {kind}", unit="model") as bar:
        model, description = fit_model(kind, ts.x[train], ts.y[train], ts.query[train], seed)
        bar.update()
    auc = float(roc_auc_score(ts.y[hold], model_scores(model, ts.x[hold])))
    onnx_bytes, opset = export_onnx(model, ts.x.shape[1])
    max_diff = parity(model, onnx_bytes, ts.x[hold][:5000])
    if max_diff > PARITY_TOLERANCE:
        raise PublishRefused(
            f"ONNX and the trained {kind} model disagree by {max_diff:.2e} (> {PARITY_TOLERANCE}); model not published"
        )
    names = feature_names(cfg.features)
    importance = np.asarray(model.feature_importances_, dtype=float)
    importance = importance / importance.sum() if importance.sum() > 0 else importance
    card = {
        "kind": kind,
        "model": description,
        "score": "probability" if kind == "gbc" else "ranking score (higher ranks first)",
        "feature_names": list(names),
        "opset": opset,
        "training_window": {"start_ms": ts.start_ms, "end_ms": ts.end_ms},
        "rows": int(len(ts.y)), "positives": int(ts.y.sum()), "users": ts.users,
        "holdout": {"split_at_ms": int(split_time), "rows": int(hold.sum()), "auc": round(auc, 4)},
        "onnx_parity_max_abs_diff": max_diff,
        "feature_importance": {n: round(float(v), 6) for n, v in zip(names, importance)},
        "reference_distributions": reference_distributions(ts.x[train], names),
        "features_config": cfg.features.model_dump(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Registry(registry).publish({"model.onnx": onnx_bytes}, card, promote=promote)
    log.info("published %s %s (holdout AUC %.3f, parity %.1e)%s", kind, out.name, auc, max_diff,
             " and promoted it" if promote else "")
    return out


def reference_distributions(x: np.ndarray, names, bins: int = 10) -> dict[str, dict]:
    """Per feature: decile bin edges of the training rows and the share of rows in each bin (the
    reference a drift check (PSI) compares live windows against)."""
    out = {}
    for n, name in enumerate(names):
        col = x[:, n].astype(float)
        edges = np.unique(np.quantile(col, np.linspace(0, 1, bins + 1)))
        if len(edges) < 2:
            edges = np.array([col.min(), col.min() + 1.0])
        counts, _ = np.histogram(np.clip(col, edges[0], edges[-1]), bins=edges)
        out[name] = {"edges": [round(float(e), 6) for e in edges],
                     "shares": [round(float(c) / max(len(col), 1), 6) for c in counts]}
    return out


def export_onnx(model, n_features: int) -> tuple[bytes, int]:
    if hasattr(model, "booster_"):  # LightGBM: onnxmltools' converter (opset 15 is its newest)
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        onx = convert_lightgbm(model.booster_, initial_types=[("features", FloatTensorType([None, n_features]))],
                               target_opset=15, zipmap=False)
        round_thresholds_down(onx, model.booster_)
    else:
        from skl2onnx import to_onnx

        onx = to_onnx(model, np.zeros((1, n_features), dtype=np.float32),
                      options={id(model): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    opset = next(o.version for o in onx.opset_import if o.domain in ("", "ai.onnx"))
    return onx.SerializeToString(), int(opset)


def round_thresholds_down(onx, booster) -> int:
    """LightGBM splits on `x <= t` with t a double; the ONNX tree stores t rounded to the nearest
    float32. When that rounds up, a float32 x equal to the rounded value goes left in ONNX and
    right in LightGBM (seen: t = 0.93749997 stored as 0.9375, a 0.06 score difference). For a
    float32 x, `x <= t` holds exactly when `x <= the largest float32 not above t`, so each
    threshold that was rounded up is moved one float32 step down. Returns how many were moved."""
    below: dict[int, dict[np.float32, list[float]]] = defaultdict(lambda: defaultdict(list))

    def walk(node: dict) -> None:
        if "split_index" in node:
            if node.get("decision_type") == "<=":
                t = float(node["threshold"])
                below[int(node["split_feature"])][np.float32(t)].append(t)
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    moved = 0
    for node in onx.graph.node:
        if not node.op_type.startswith("TreeEnsemble"):
            continue
        attrs = {a.name: a for a in node.attribute}
        modes, features, values = attrs["nodes_modes"].strings, attrs["nodes_featureids"].ints, attrs["nodes_values"].floats
        for n, (mode, feature) in enumerate(zip(modes, features)):
            v = np.float32(values[n])
            doubles = below[int(feature)].get(v, [])
            if mode == b"BRANCH_LEQ" and doubles and all(float(v) > t for t in doubles):
                values[n] = float(np.nextafter(v, np.float32(-np.inf)))
                moved += 1
    return moved


def parity(model, onnx_bytes: bytes, x: np.ndarray) -> float:
    """Largest absolute difference between the ONNX model (run as the job runs it) and the
    trained model on these rows."""
    import onnxruntime as ort

    from udfs.scorer import session_scores

    if not len(x):
        return 0.0
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return float(np.max(np.abs(session_scores(sess, x) - model_scores(model, x))))
