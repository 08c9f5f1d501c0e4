"""Point-in-time training set -> a model (LightGBM classifier or LambdaMART ranker) -> ONNX
(parity-checked) -> registry.

The label asks the question `evaluate` scores: at cut-offs spread over the training period, which
items will the user interact with in the next `training.horizon_s` (by default the span of the
held-out period)? Features come from the offline replay folded up to the cut-off only (the job's
own functions), candidates from the same generator the job uses; labels only from events at or
after the cut-off. The last fifth of the cut-offs (by time) is the early-stopping validation set.

Two kinds of model, both LightGBM, exported to ONNX with onnxmltools and checked against the
trained model before publishing:
- `classifier`: LGBMClassifier (binary), P(interact within the horizon) per (user, item) row;
- `lambdamart`: LGBMRanker (objective lambdarank) on graded relevance, each (user, cut-off)
  candidate list one query, so it optimizes the order within a list (NDCG) directly; its score is
  a ranking score, not a probability."""

from __future__ import annotations

import logging
import random
import time
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
from onnxmltools import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from contract.config import JobConfig
from contract.schema import Interaction
from models.offline import OfflineReplay, in_features, load_catalog, read_history
from models.onnx_form import MIN_KENDALL_TAU, MIN_TOP_OVERLAP, RankingParity, ranking_parity, single_target_form
from models.registry import Registry
from udfs.features import feature_names, new_purchase_occasion, user_item_matrix
from udfs.scorer import session_scores

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-5
GRADE = {"view": 1, "click": 2, "add_to_cart": 3, "purchase": 4}
MAX_GRADE = 7  # purchase (4) plus at most three further purchase occasions
VALIDATION_SHARE = 0.2  # of the cut-offs, the latest, for early stopping


class PublishRefused(RuntimeError):
    """The exported model does not behave like the trained one; nothing was published."""


@dataclass
class TrainingSet:
    x: np.ndarray
    y: np.ndarray  # graded relevance (0 = not interacted with in the horizon)
    cutoff: np.ndarray  # ms, per row
    query: np.ndarray  # per row: which (user, cut-off) candidate list it belongs to (contiguous)
    users: int
    start_ms: int
    end_ms: int
    horizon_ms: int = 0
    replay: OfflineReplay | None = None
    user: np.ndarray | None = None  # per row: whose list (for inspection and tests)
    item: np.ndarray | None = None  # per row: which candidate  # with replay_to_end: the state after the whole history

    def binary(self) -> np.ndarray:
        return (self.y > 0).astype(np.int32)


def relevance(future: list[Interaction], graded: bool, gap_ms: int) -> dict[str, int]:
    """item -> label from the user's events in the horizon: graded, the strongest interaction
    (view 1 .. purchase 4) plus 1 per further purchase occasion (purchases more than a session gap
    apart), at most MAX_GRADE; binary, 1 for any interaction."""
    best: dict[str, int] = {}
    buys: dict[str, list[int]] = defaultdict(list)
    for e in filter(in_features, future):
        best[e.item_id] = max(best.get(e.item_id, 0), GRADE.get(e.type, 0))
        if e.type == "purchase":
            buys[e.item_id].append(e.ts)
    if not graded:
        return {i: 1 for i, g in best.items() if g > 0}
    out = {}
    for item, g in best.items():
        occasions, last = 0, 0
        for ts in sorted(buys.get(item, ())):
            occasions += new_purchase_occasion(ts, last, gap_ms)
            last = ts
        out[item] = min(MAX_GRADE, g + max(0, occasions - 1))
    return {i: g for i, g in out.items() if g > 0}


def cutoff_times(first_ms: int, last_ms: int, horizon_ms: int, n: int, mb_ms: int) -> list[int]:
    """n cut-offs evenly over the training period, each on a window boundary and leaving a whole
    horizon before the last event; none when the period is shorter than the horizon."""
    usable = last_ms - horizon_ms
    if usable <= first_ms:
        return []
    step = (usable - first_ms) / n
    times = sorted({int(first_ms + step * (i + 1)) for i in range(n)})
    return sorted({t - t % mb_ms for t in times if t - t % mb_ms > first_ms})


def build_training_set(
    history: str | Path | list[Interaction], cfg: JobConfig, horizon_s: float | None = None, seed: int = 0,
    catalog: str | Path | None = None, progress: bool = True, replay_to_end: bool = False,
) -> TrainingSet:
    """history: a JSONL log, or its valid on-time events (sorted by time). horizon_s: the label
    horizon (default cfg.training.horizon_s; when that is 0 too, a fifth of the history's span:
    evaluate and train pass the held-out span instead).
    replay_to_end: keep folding past the last cut-off and return the replay (what the job would
    hold at the end of the history), so a caller does not replay the same events again."""
    if isinstance(history, list):
        events = history
    else:
        hist = read_history(history, cfg)
        events = hist.events
        if hist.rejected:
            log.warning("%d history lines rejected (first: line %d, %s)", len(hist.rejected), *hist.rejected[0])
        if hist.late:
            log.warning("%d history lines late (first: line %d)", len(hist.late), hist.late[0])
    if not events:
        raise ValueError(f"{history if not isinstance(history, list) else 'the history'} holds no valid events")
    tc = cfg.training
    first_ts, last_ts = events[0].ts, events[-1].ts
    horizon = horizon_s if horizon_s is not None else tc.horizon_s
    horizon_ms = int(horizon * 1000) if horizon else max(1, (last_ts - first_ts) // 5)
    replay = OfflineReplay(cfg)
    if catalog:
        replay.add_catalog(load_catalog(catalog))
    cuts = cutoff_times(first_ts, last_ts, horizon_ms, tc.cutoffs, replay.mb_ms)
    if not cuts:
        raise ValueError(f"the history spans {(last_ts - first_ts) / 86400e3:.1f} days, not more than the label "
                         f"horizon ({horizon_ms / 86400e3:.1f} days): give a longer history or a shorter "
                         "--horizon-s (training.horizon_s)")
    rng = random.Random(seed)
    ts_all = [e.ts for e in events]
    by_user: dict[str, list[Interaction]] = defaultdict(list)
    for e in events:
        by_user[e.user_id].append(e)
    user_ts = {u: [e.ts for e in evs] for u, evs in by_user.items()}
    gap_ms = int(cfg.features.session_gap_s * 1000)
    graded = tc.relevance == "graded"
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    cut_rows: list[int] = []
    queries: list[int] = []
    row_users: list[str] = []
    row_items: list[str] = []
    folded = 0
    bar = tqdm(total=len(events), desc="replaying to cut-offs", unit="ev", disable=not progress, mininterval=1)
    for t in cuts:
        upto = bisect_left(ts_all, t)  # events before t: their windows end at or before t
        for _ in replay.run(events[folded:upto]):
            pass
        bar.update(upto - folded)
        folded = upto
        pool = replay.candidate_pool()
        users = []
        for u, state in replay.states.items():
            if not state.personalized():
                continue
            lo = bisect_left(user_ts[u], t)
            hi = bisect_left(user_ts[u], t + horizon_ms)
            if hi > lo:
                users.append((u, lo, hi))
        users.sort()
        if len(users) > tc.users_per_cutoff:
            users = sorted(rng.sample(users, tc.users_per_cutoff))
        for u, lo, hi in users:
            state = replay.states[u]
            labels = relevance(by_user[u][lo:hi], graded, gap_ms)
            cands = replay.candidates(pool, state)
            pos = [c for c in cands if c.item_id in labels]
            neg = [c for c in cands if c.item_id not in labels]
            neg = rng.sample(neg, min(len(neg), tc.negatives_per_query))
            chosen = pos + neg
            if not chosen:
                continue
            # shuffled: LightGBM breaks score ties by row order, so relevant rows first would make
            # the early trees' NDCG look right (and their lambda gradients vanish) by position alone
            rng.shuffle(chosen)
            xs.append(user_item_matrix(state, t, cfg.features, chosen))
            ys.append(np.asarray([labels.get(c.item_id, 0) for c in chosen], dtype=np.int32))
            cut_rows += [t] * len(chosen)
            queries += [len(xs) - 1] * len(chosen)
            row_users += [u] * len(chosen)
            row_items += [c.item_id for c in chosen]
    if replay_to_end:
        for _ in replay.run(events[folded:]):
            pass
        bar.update(len(events) - folded)
    bar.close()
    y = np.concatenate(ys) if ys else np.zeros(0, np.int32)
    if not xs or len(set((y > 0).tolist())) < 2:
        raise ValueError("history too short to build a training set with both labels; give a longer history")
    return TrainingSet(np.concatenate(xs), y, np.asarray(cut_rows), np.asarray(queries),
                       len(replay.states), first_ts, last_ts, horizon_ms, replay if replay_to_end else None,
                       np.asarray(row_users), np.asarray(row_items))


MODEL_KINDS = ("classifier", "lambdamart")


def time_split(ts: TrainingSet) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows): the latest VALIDATION_SHARE of the cut-offs validate."""
    cuts = np.unique(ts.cutoff)
    n_val = max(1, int(round(len(cuts) * VALIDATION_SHARE))) if len(cuts) > 1 else 0
    if n_val == 0:
        return np.ones(len(ts.y), bool), np.zeros(len(ts.y), bool)
    val = ts.cutoff >= cuts[-n_val]
    return ~val, val


def fit_model(kind: str, x: np.ndarray, y: np.ndarray, query: np.ndarray, seed: int = 0,
              valid: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, max_trees: int = 1000,
              early_stopping_rounds: int = 50):
    """Fit one kind of model on rows whose queries are contiguous; y is graded relevance (the
    classifier learns y > 0). valid: (x, y, query) of later cut-offs for early stopping. Returns
    (model, description). Fitted on float32 features, as the job scores them: split thresholds
    then fall between values the ONNX model (float32 thresholds) sees the same way."""
    x = x.astype(np.float32)
    common = dict(n_estimators=max_trees, num_leaves=31, learning_rate=0.05, min_child_samples=20,
                  subsample=0.8, subsample_freq=1, colsample_bytree=0.9, importance_type="gain",
                  random_state=seed, n_jobs=2, verbose=-1)
    stop = [lgb.early_stopping(early_stopping_rounds, verbose=False)] if valid is not None and len(valid[1]) else []
    if kind == "classifier":
        model = lgb.LGBMClassifier(objective="binary", **common)
        fit = dict(eval_X=(valid[0].astype(np.float32),), eval_y=((valid[1] > 0).astype(int),),
                   eval_metric="binary_logloss", callbacks=stop) if stop else {}
        model.fit(x, (y > 0).astype(int), **fit)
    elif kind == "lambdamart":
        _, sizes = np.unique(query, return_counts=True)  # np.unique sorts; queries are ascending
        model = lgb.LGBMRanker(objective="lambdarank", **common)
        fit = {}
        if stop:
            _, vsizes = np.unique(valid[2], return_counts=True)
            fit = dict(eval_X=(valid[0].astype(np.float32),), eval_y=(valid[1],), eval_group=[vsizes],
                       eval_at=[10], callbacks=stop)
        model.fit(x, y, group=sizes, **fit)
    else:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(MODEL_KINDS)}")
    trees = model.best_iteration_ or max_trees
    name = "LGBMClassifier(objective=binary" if kind == "classifier" else "LGBMRanker(objective=lambdarank"
    how = "early stopping on later cut-offs" if stop else "no validation cut-offs: all rounds"
    return model, f"LightGBM {name}, num_leaves=31, trees={trees} ({how}))"


def model_scores(model, x: np.ndarray) -> np.ndarray:
    """What the exported ONNX model must reproduce: P(interact) or the ranking score."""
    x = x.astype(np.float32)
    return model.predict_proba(x)[:, 1] if hasattr(model, "predict_proba") else model.predict(x)


@dataclass
class TrainedModel:
    """A fitted model, its ONNX export (parity-checked) and its card, not yet published."""
    kind: str
    model: object
    onnx: bytes
    card: dict


def fit_and_export(ts: TrainingSet, cfg: JobConfig, kind: str = "classifier", seed: int = 0,
                   progress: bool = True) -> TrainedModel:
    """Fit on the earlier cut-offs (early stopping on the later ones), export to ONNX (in its fast
    form when training.onnx_form asks for it and the fast form ranks the held-out lists as the
    export does) and check that ONNX scores as the trained model does; PublishRefused if not."""
    fit, val = time_split(ts)
    binary = ts.binary()
    if len(set(binary[fit])) < 2:
        raise ValueError("the earlier cut-offs hold no relevant (or no irrelevant) candidate; give a longer history")
    tc = cfg.training
    valid = (ts.x[val], ts.y[val], ts.query[val]) if val.any() and len(set(binary[val])) == 2 else None
    with tqdm(total=1, desc=f"training {kind}", unit="model", disable=not progress) as bar:
        model, description = fit_model(kind, ts.x[fit], ts.y[fit], ts.query[fit], seed, valid,
                                       tc.max_trees, tc.early_stopping_rounds)
        bar.update()
    held = val if valid is not None else fit
    auc = float(roc_auc_score(binary[held], model_scores(model, ts.x[held])))
    onnx_bytes, opset = export_onnx(model, ts.x.shape[1])
    form: dict = {"form": "onnxmltools' export"}
    fast = single_target_form(onnx_bytes) if tc.onnx_form == "fast" else None
    if fast is not None:
        ranked = check_ranking_parity(onnx_bytes, fast, ts.x[held], ts.query[held])
        onnx_bytes = fast
        form = {"form": "single-target TreeEnsembleRegressor + Sigmoid", "against_export": {
            "top10_overlap": round(ranked.top10_overlap, 6), "kendall_tau": round(ranked.kendall_tau, 6),
            "lists": ranked.lists}}
    max_diff = parity(model, onnx_bytes, ts.x[held][:5000])
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
        "score": "probability" if kind == "classifier" else "ranking score (higher ranks first)",
        "feature_names": list(names),
        "opset": opset,
        "training_window": {"start_ms": ts.start_ms, "end_ms": ts.end_ms},
        "label": {"horizon_s": ts.horizon_ms / 1000, "relevance": cfg.training.relevance,
                  "cutoffs": len(np.unique(ts.cutoff))},
        "rows": int(len(ts.y)), "positives": int(binary.sum()), "users": ts.users,
        "holdout": {"split_at_ms": int(ts.cutoff[held].min()), "rows": int(held.sum()), "auc": round(auc, 4),
                    "what": "the validation cut-offs (candidate rows, sampled negatives)" if valid is not None
                    else "the fitted rows (no validation cut-offs)"},
        "onnx_parity_max_diff": max_diff,
        "onnx_form": form,
        "feature_importance": {n: round(float(v), 6) for n, v in zip(names, importance)},
        "reference_distributions": reference_distributions(ts.x[fit], names),
        "features_config": cfg.features.model_dump(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return TrainedModel(kind, model, onnx_bytes, card)


def publish(trained: TrainedModel, registry: str | Path, promote: bool = True, gate: dict | None = None) -> Path:
    """Write the model into the registry (promoted or not); gate: the publishing gate's verdict,
    kept in the card."""
    card = dict(trained.card, **({"gate": gate} if gate is not None else {}))
    files = {"model.onnx": trained.onnx}
    if hasattr(trained.model, "booster_"):  # LightGBM: its own file too, for TreeSHAP reasons (udfs.reasons)
        files["model.txt"] = trained.model.booster_.model_to_string().encode()
    out = Registry(registry).publish(files, card, promote=promote)
    log.info("published %s %s (validation AUC %.3f, parity %.1e)%s", trained.kind, out.name,
             card["holdout"]["auc"], card["onnx_parity_max_diff"], " and promoted it" if promote else "")
    return out


def train_and_publish(ts: TrainingSet, registry: str | Path, cfg: JobConfig, seed: int = 0,
                      kind: str = "classifier", promote: bool = True, progress: bool = True) -> Path:
    """Fit, export and publish without the gate (the gate needs a held-out period: see
    models.evaluation.gate)."""
    return publish(fit_and_export(ts, cfg, kind, seed, progress), registry, promote)


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

        onx = convert_lightgbm(model.booster_, initial_types=[("features", FloatTensorType([None, n_features]))],
                               target_opset=15, zipmap=False)
        round_thresholds_down(onx, model.booster_)
    else:
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
    """Largest difference between the ONNX model (run as the job runs it) and the trained model on
    these rows, relative to the largest score magnitude where that is above 1: ONNX adds a ranker's
    ~1000 trees in float32, LightGBM in float64, so a ranking score of 5 carries ~5x the rounding
    of a probability."""
    if not len(x):
        return 0.0
    want = model_scores(model, x)
    return float(np.max(np.abs(onnx_scores(onnx_bytes, x) - want)) / max(1.0, float(np.max(np.abs(want)))))


def onnx_scores(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    return session_scores(ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"]), x)


def check_ranking_parity(exported: bytes, fast: bytes, x: np.ndarray, lists: np.ndarray) -> RankingParity:
    """How closely the fast form ranks held-out candidate lists (x's rows; lists: per row, its list)
    as the export does (models.onnx_form.ranking_parity); PublishRefused below the thresholds."""
    ranked = ranking_parity(onnx_scores(exported, x), onnx_scores(fast, x), lists)
    if not ranked.holds():
        raise PublishRefused(
            f"the fast ONNX form ranks the {ranked.lists} held-out candidate lists differently from onnxmltools' "
            f"export: top-10 overlap {ranked.top10_overlap:.4f} (needs >= {MIN_TOP_OVERLAP}), Kendall tau "
            f"{ranked.kendall_tau:.4f} (needs >= {MIN_KENDALL_TAU}); model not published. Publish the export as it "
            'is with training.onnx_form = "exported" in the config, and report the model: the fast form is meant to '
            "score exactly as the export does")
    return ranked
