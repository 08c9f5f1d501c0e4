"""Model v0: point-in-time training set -> GradientBoostingClassifier -> ONNX -> registry.

For sampled (user, window end) cut-offs from the offline replay, candidates come from the same
generator the job uses; the label says whether the user interacts with the item within
`horizon_s` after the cut-off. The last quarter of cut-offs (by time) is the holdout."""

from __future__ import annotations

import json
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
    users: int
    start_ms: int
    end_ms: int


def build_training_set(
    history: str | Path, cfg: JobConfig, horizon_s: float = 1800.0, sample: float = 0.3,
    negatives_per_cutoff: int = 20, seed: int = 0, catalog: str | Path | None = None,
    progress: bool = True,
) -> TrainingSet:
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
    windows = len({e.ts - e.ts % replay.mb_ms for e in events})
    for step in tqdm(replay.run(events), total=windows, desc="replaying windows", disable=not progress, unit="win"):
        t = step.window_end
        if t + horizon_ms > last_ts:
            break  # labels would be cut short
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
    if not xs or len(set(ys)) < 2:
        raise ValueError("history too short to build a training set with both labels; simulate more events")
    return TrainingSet(np.concatenate(xs), np.asarray(ys), np.asarray(cuts),
                       len(replay.states), events[0].ts, last_ts)


def next_version(registry: Path) -> str:
    existing = [int(p.name[1:]) for p in registry.glob("v*") if p.name[1:].isdigit()]
    return f"v{max(existing, default=0) + 1:04d}"


def train_and_publish(ts: TrainingSet, registry: str | Path, cfg: JobConfig, seed: int = 0) -> Path:
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    order = np.argsort(ts.cutoff, kind="stable")
    split = int(len(order) * 0.75)
    split_time = ts.cutoff[order[split]]
    train = ts.cutoff < split_time
    hold = ~train
    if hold.sum() == 0 or len(set(ts.y[hold])) < 2 or len(set(ts.y[train])) < 2:
        raise ValueError("time split left one side without both labels; simulate more events")
    model = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=seed)
    with tqdm(total=1, desc="training GradientBoostingClassifier", unit="model") as bar:
        model.fit(ts.x[train], ts.y[train])
        bar.update()
    p_hold = model.predict_proba(ts.x[hold])[:, 1]
    auc = float(roc_auc_score(ts.y[hold], p_hold))
    onnx_bytes, opset = export_onnx(model, ts.x.shape[1])
    max_diff = parity(model, onnx_bytes, ts.x[hold][:5000])
    if max_diff > PARITY_TOLERANCE:
        raise PublishRefused(
            f"ONNX and scikit-learn disagree by {max_diff:.2e} (> {PARITY_TOLERANCE}); model not published"
        )
    registry = Path(registry)
    registry.mkdir(parents=True, exist_ok=True)
    version = next_version(registry)
    out = registry / version
    out.mkdir()
    (out / "model.onnx").write_bytes(onnx_bytes)
    card = {
        "version": version,
        "model": "GradientBoostingClassifier(n_estimators=100, max_depth=3)",
        "feature_names": list(feature_names(cfg.features)),
        "opset": opset,
        "training_window": {"start_ms": ts.start_ms, "end_ms": ts.end_ms},
        "rows": int(len(ts.y)), "positives": int(ts.y.sum()), "users": ts.users,
        "holdout": {"split_at_ms": int(split_time), "rows": int(hold.sum()), "auc": round(auc, 4)},
        "onnx_parity_max_abs_diff": max_diff,
        "feature_importance": {n: round(float(v), 6) for n, v in
                               zip(feature_names(cfg.features), model.feature_importances_)},
        "reference_distributions": reference_distributions(ts.x[train], feature_names(cfg.features)),
        "features_config": cfg.features.model_dump(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "card.json").write_text(json.dumps(card, indent=2))
    current = registry / "current"
    tmp = registry / ".current.tmp"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(version)
    tmp.replace(current)
    log.info("published %s (holdout AUC %.3f, parity %.1e)", version, auc, max_diff)
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
    from skl2onnx import to_onnx

    onx = to_onnx(model, np.zeros((1, n_features), dtype=np.float32),
                  options={id(model): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    opset = next(o.version for o in onx.opset_import if o.domain in ("", "ai.onnx"))
    return onx.SerializeToString(), int(opset)


def parity(model, onnx_bytes: bytes, x: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (probs,) = sess.run(["probabilities"], {sess.get_inputs()[0].name: x.astype(np.float32)})
    ref = model.predict_proba(x.astype(np.float32))[:, 1]
    return float(np.max(np.abs(np.asarray(probs)[:, 1] - ref))) if len(x) else 0.0
