"""Next-period evaluation of rankers on an event history (`streamrank evaluate`):
split by time, fit on the earlier part, and score each user's ranking against the items they
interacted with in the later part.

Metrics (binary relevance: an item is relevant when the user interacted with it in the test period):
NDCG@k, HitRate@k, MRR (reciprocal rank of the first relevant item in the full ranking, 0 if none),
and AUC (over the ranker's candidate list: the chance a relevant item is ranked above an irrelevant
one; users whose list has no relevant or no irrelevant item are left out of AUC).

Baselines (fitted on the training part only):
- `popularity`: items by interaction count;
- `trending`: items by exponentially decayed count (half-life `trending_half_life_s`) at the split;
- `user_top_category`: popular items of the user's most frequent category, then global popularity;
- `repeat`: the user's own past items by frequency, ties broken by recency, then global popularity.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
import numpy as np
import onnxruntime as ort

from contract.paths import catalog_path
from contract.schema import Interaction
from models.offline import in_features, read_history
from models.training import MODEL_KINDS, build_training_set, fit_and_export
from udfs.features import UserState, user_item_matrix
from udfs.scorer import session_scores

Ranker = Callable[[str], list[str]]  # user_id -> ranked item ids (best first)


@dataclass
class Split:
    train: list[Interaction]
    test: list[Interaction]
    at_ms: int


def split_by_time(events: Iterable[Interaction], train_fraction: float = 0.8) -> Split:
    """Split at the event time below which `train_fraction` of the events lie."""
    ordered = sorted(events, key=lambda e: e.ts)
    if len(ordered) < 2:
        raise ValueError("need at least two events to split by time")
    at = ordered[min(len(ordered) - 1, int(len(ordered) * train_fraction))].ts
    return Split([e for e in ordered if e.ts < at], [e for e in ordered if e.ts >= at], at)


@dataclass
class Baselines:
    popular: list[str]
    trending: list[str]
    by_category: dict[str, list[str]]
    category_of: dict[str, str]
    user_items: dict[str, list[str]] = field(default_factory=dict)
    user_top_category: dict[str, str] = field(default_factory=dict)
    pool: int = 200

    @staticmethod
    def fit(train: list[Interaction], at_ms: int, trending_half_life_s: float = 86_400, pool: int = 200) -> Baselines:
        train = [e for e in train if in_features(e)]
        counts = Counter(e.item_id for e in train)
        decay = math.log(2) / (trending_half_life_s * 1000)
        trend: dict[str, float] = defaultdict(float)
        category_of: dict[str, str] = {}
        per_user: dict[str, Counter] = defaultdict(Counter)
        last_seen: dict[tuple[str, str], int] = {}
        user_cats: dict[str, Counter] = defaultdict(Counter)
        for e in train:
            trend[e.item_id] += math.exp(-decay * (at_ms - e.ts))
            category_of[e.item_id] = e.category
            per_user[e.user_id][e.item_id] += 1
            last_seen[(e.user_id, e.item_id)] = e.ts
            user_cats[e.user_id][e.category] += 1
        popular = [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        by_category: dict[str, list[str]] = defaultdict(list)
        for item in popular:
            by_category[category_of[item]].append(item)
        user_items = {u: [i for i, _ in sorted(c.items(), key=lambda kv: (-kv[1], -last_seen[(u, kv[0])], kv[0]))]
                      for u, c in per_user.items()}
        top_cat = {u: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for u, c in user_cats.items()}
        return Baselines(popular[:pool], [i for i, _ in sorted(trend.items(), key=lambda kv: (-kv[1], kv[0]))][:pool],
                         dict(by_category), category_of, user_items, top_cat, pool)

    def _then(self, first: list[str], rest: list[str]) -> list[str]:
        seen = set(first)
        return (first + [i for i in rest if i not in seen])[: self.pool]

    def rankers(self) -> dict[str, Ranker]:
        return {
            "popularity": lambda u: self.popular,
            "trending": lambda u: self.trending,
            "user_top_category": lambda u: self._then(
                self.by_category.get(self.user_top_category.get(u, ""), [])[: self.pool], self.popular),
            "repeat": lambda u: self._then(self.user_items.get(u, []), self.popular),
        }


def ndcg_at(ranked: list[str], relevant: set[str], k: int) -> float:
    dcg = sum(1 / math.log2(r + 2) for r, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1 / math.log2(r + 2) for r in range(min(k, len(relevant))))
    return dcg / ideal if ideal else 0.0


def hit_at(ranked: list[str], relevant: set[str], k: int) -> float:
    return 1.0 if any(item in relevant for item in ranked[:k]) else 0.0


def reciprocal_rank(ranked: list[str], relevant: set[str]) -> float:
    return next((1 / (r + 1) for r, item in enumerate(ranked) if item in relevant), 0.0)


def auc(ranked: list[str], relevant: set[str]) -> float | None:
    """Share of (relevant, irrelevant) pairs in the list where the relevant one ranks higher."""
    pos = neg = above = 0
    for item in ranked:
        if item in relevant:
            pos += 1
        else:
            neg += 1
            above += pos  # every relevant item seen so far ranks above this irrelevant one
    if pos == 0 or neg == 0:
        return None
    return above / (pos * neg)


def relevant_items(test: list[Interaction], users: set[str] | None = None) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for e in test:
        if in_features(e) and (users is None or e.user_id in users):
            out[e.user_id].add(e.item_id)
    return dict(out)


def rank_users(rankers: dict[str, Ranker], users: Iterable[str]) -> dict[str, dict[str, list[str]]]:
    """Each ranker's list for each user, computed once."""
    users = list(users)
    return {name: {u: rank(u) for u in users} for name, rank in rankers.items()}


def metrics(rankings: dict[str, dict[str, list[str]]], truth: dict[str, set[str]], k: int = 10
            ) -> dict[str, dict[str, float]]:
    """Mean metrics per ranker over the users in `truth` (AUC over those it is defined for)."""
    out = {}
    for name, lists in rankings.items():
        means = {m: round(float(v.mean()), 6) if len(v) else 0.0 for m, v in per_user(lists, truth, k).items()}
        aucs = [a for a in (auc(lists[u], r) for u, r in truth.items()) if a is not None]
        out[name] = {**means, "auc": round(sum(aucs) / len(aucs), 6) if aucs else None}
    return out


def ndcg_curves(rankings: dict[str, dict[str, list[str]]], truth: dict[str, set[str]], max_k: int = 20
                ) -> dict[str, list[float]]:
    n = max(len(truth), 1)
    return {name: [round(sum(ndcg_at(lists[u], rel, kk) for u, rel in truth.items()) / n, 6)
                   for kk in range(1, max_k + 1)] for name, lists in rankings.items()}


def evaluate(rankers: dict[str, Ranker], truth: dict[str, set[str]], k: int = 10) -> dict[str, dict[str, float]]:
    return metrics(rank_users(rankers, truth), truth, k)


def model_ranker(score: Callable, replay, cfg, at_ms: int, scored: list | None = None,
                 truth: dict[str, set[str]] | None = None, candidates: dict[str, list[str]] | None = None) -> Ranker:
    """The job's own ranking at the split: the candidates the job's generator would offer the
    user (global and category trending plus the user's own items, from a replay of the training
    part), ordered by `score` (an (n, features) matrix -> scores). Users unknown at the split get
    the global trending candidates. candidates: gets each ranked user's candidate ids."""
    pool = replay.candidate_pool()

    def rank(user: str) -> list[str]:
        state = replay.states.get(user) or UserState()
        cands = replay.candidates(pool, state)
        if candidates is not None:
            candidates[user] = [c.item_id for c in cands]
        if not cands:
            return []
        scores = score(user_item_matrix(state, at_ms, cfg.features, cands))
        if scored is not None and truth is not None and user in truth:  # (score, relevant) for calibration
            scored.extend((float(s), cand.item_id in truth.get(user, ())) for s, cand in zip(scores, cands))
        order = sorted(range(len(cands)), key=lambda n: (-float(scores[n]), cands[n].item_id))
        return [cands[n].item_id for n in order]

    return rank


class NotEnoughEvents(ValueError):
    """The history has too few valid events to split by time; the message names the rejects."""


def per_user(lists: dict[str, list[str]], truth: dict[str, set[str]], k: int) -> dict[str, np.ndarray]:
    """Each metric per user (in truth's order): what the means and the bootstrap resample."""
    users = list(truth)
    return {f"ndcg_at_{k}": np.array([ndcg_at(lists[u], truth[u], k) for u in users]),
            f"hitrate_at_{k}": np.array([hit_at(lists[u], truth[u], k) for u in users]),
            "mrr": np.array([reciprocal_rank(lists[u], truth[u]) for u in users])}


BOOTSTRAP_SAMPLES = 1000


def bootstrap_ci(values: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> list[float]:
    """95% percentile interval of the mean over users, resampling users with replacement."""
    if len(values) == 0:
        return [0.0, 0.0]
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    return [round(float(np.percentile(means, 2.5)), 6), round(float(np.percentile(means, 97.5)), 6)]


def candidate_recall(candidates: dict[str, list[str]], truth: dict[str, set[str]]) -> float:
    """Share of the (user, test item) pairs whose item was among the user's candidates at all."""
    hit = sum(len(truth[u] & set(candidates.get(u, ()))) for u in truth)
    return round(hit / max(1, sum(len(r) for r in truth.values())), 6)


def past_purchases(train: list[Interaction]) -> Counter:
    return Counter(e.user_id for e in train if e.type == "purchase")


def segment_of(user: str, purchases: Counter, known: set[str]) -> str:
    if user not in known:
        return "new"
    n = purchases.get(user, 0)
    return "purchases_5plus" if n >= 5 else "purchases_1to4" if n >= 1 else "purchases_0"


SEGMENTS = ("purchases_5plus", "purchases_1to4", "purchases_0", "new")


def gate(results: dict[str, dict], model: str, baselines: Iterable[str], k: int = 10) -> dict:
    """The publishing gate: promote only a model that beats the best baseline on NDCG@k."""
    key = f"ndcg_at_{k}"
    best = max(baselines, key=lambda n: results[n][key])
    ours, theirs = results[model][key], results[best][key]
    promote = ours > theirs
    reason = (f"{model} NDCG@{k} {ours:.4f} {'beats' if promote else 'does not beat'} the best baseline "
              f"{best} ({theirs:.4f}) on the held-out period")
    return {"promote": promote, "reason": reason, "metric": key, "model": ours, "best_baseline": best,
            "best_baseline_value": theirs}


@dataclass
class HoldoutResult:
    results: dict[str, dict]  # ranker -> metrics (and their intervals)
    summary: dict  # comparison, segments, candidate recall, populations
    trained: dict  # kind -> models.training.TrainedModel


def holdout_evaluation(history: str, cfg, kinds: Iterable[str], train_fraction: float = 0.8, k: int = 10,
                       work_dir: str | None = None, progress: bool = True, catalog: str | None = None,
                       report: bool = True) -> HoldoutResult:
    """Split the history by time, train each kind of model on the earlier part (labels over a
    horizon equal to the later part's span unless training.horizon_s says otherwise), fit the
    baselines on it, and score everything on the users the job would have a list for at the
    split who interact in the later part. Models score as published: through their ONNX export."""
    hist = read_history(history, cfg)
    if len(hist.events) < 2:
        reasons = Counter(r for _, r in hist.rejected).most_common(5)
        raise NotEnoughEvents(
            f"{history} holds {len(hist.events)} valid event(s) ({len(hist.rejected)} lines rejected, "
            f"{len(hist.late)} late); most common reasons: "
            f"{', '.join(f'{r} {n}' for r, n in reasons) or 'none'}; fix the input (see the event schema in "
            "contract/schema.py) and run again")
    split = split_by_time(hist.events, train_fraction)
    work = Path(work_dir or tempfile.mkdtemp(prefix="streamrank-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    if catalog is None and catalog_path(history).exists():
        catalog = str(catalog_path(history))
    horizon_s = cfg.training.horizon_s or (hist.events[-1].ts - split.at_ms) / 1000
    ts = build_training_set(split.train, cfg, horizon_s=horizon_s, catalog=catalog, progress=progress,
                            replay_to_end=True)
    trained = {kind: fit_and_export(ts, cfg, kind, progress=progress) for kind in kinds}

    replay = ts.replay  # the job's state at the split: the training replay, run to its end
    known = {u for u, s in replay.states.items() if s.personalized()}  # the job would have a list for them
    everyone = relevant_items(split.test)
    truth = {u: r for u, r in everyone.items() if u in known}
    if not truth:
        raise NotEnoughEvents(f"no user the job knows at the split ({split.at_ms} ms) interacts after it; "
                              "give a longer history or a larger --train-fraction")
    baseline_rankers = Baselines.fit(split.train, split.at_ms).rankers()
    rankers = dict(baseline_rankers)
    scored: list[tuple[float, bool]] = []  # the classifier's (probability, relevant) pairs
    candidates: dict[str, list[str]] = {}
    for n, (kind, model) in enumerate(trained.items()):
        sess = ort.InferenceSession(model.onnx, providers=["CPUExecutionProvider"])
        rankers[kind] = model_ranker(lambda x, sess=sess: session_scores(sess, x), replay, cfg, split.at_ms,
                                     scored if kind == "classifier" else None, truth,
                                     candidates if n == 0 else None)
    rankings = rank_users(rankers, everyone)  # known users and the new ones (segment "new")
    known_lists = {name: {u: lists[u] for u in truth} for name, lists in rankings.items()}
    results = metrics(known_lists, truth, k)
    values = {name: per_user(lists, truth, k) for name, lists in known_lists.items()}
    for name, per in values.items():
        for metric, v in per.items():
            results[name][f"{metric}_ci95"] = bootstrap_ci(v)
    key = f"ndcg_at_{k}"
    summary: dict = {"users_evaluated": len(truth), "split_at_ms": split.at_ms, "horizon_s": horizon_s,
                     "train_events": len(split.train), "test_events": len(split.test)}
    if trained:
        best_model = max(trained, key=lambda n: results[n][key])
        best_baseline = max(baseline_rankers, key=lambda n: results[n][key])
        diff = values[best_model][key] - values[best_baseline][key]  # paired per user
        summary["comparison"] = {
            "metric": key, "best_model": best_model, "best_baseline": best_baseline,
            "model": results[best_model][key], "baseline": results[best_baseline][key],
            "ratio": round(results[best_model][key] / results[best_baseline][key], 4)
            if results[best_baseline][key] else None,
            "difference": round(float(diff.mean()), 6), "difference_ci95": bootstrap_ci(diff)}
        summary["candidate_recall"] = candidate_recall(candidates, truth)
    purchases = past_purchases(split.train)
    segments: dict[str, dict] = {}
    for seg in SEGMENTS:
        members = {u: r for u, r in everyone.items() if segment_of(u, purchases, known) == seg}
        if members:
            segments[seg] = {"users": len(members), **{
                name: round(float(np.mean([ndcg_at(rankings[name][u], r, k) for u, r in members.items()])), 6)
                for name in rankers}}
    summary["segments"] = segments
    if report:
        for kind, model in trained.items():  # the exports as scored, beside the report
            (work / f"{kind}.onnx").write_bytes(model.onnx)
        curves = ndcg_curves(known_lists, truth)
        write_report(work, results, curves, scored, {kind: m.card for kind, m in trained.items()}, split,
                     len(truth), k, summary)
    return HoldoutResult(results, summary, trained)


def evaluate_history(history: str, cfg, train_fraction: float = 0.8, k: int = 10, work_dir: str | None = None,
                     progress: bool = True) -> dict[str, dict]:
    """`streamrank evaluate`: every kind of model against the baselines on a time holdout; the
    report goes to work_dir. Returns ranker -> metrics, plus "evaluation": the summary."""
    out = holdout_evaluation(history, cfg, MODEL_KINDS, train_fraction, k, work_dir, progress)
    return {**out.results, "evaluation": out.summary}


def write_report(out, results: dict, curves: dict, scored: list[tuple[float, bool]], model_cards: dict[str, dict],
                 split: Split, users: int, k: int, summary: dict | None = None) -> None:
    """evaluation.json + evaluation.md (the model cards with the baselines) and three plots:
    ndcg_at_k.png, feature_importance.png (one panel per model), calibration.png (the classifier)."""
    key = f"ndcg_at_{k}"
    best_baseline = max((n for n in results if n not in model_cards), key=lambda n: results[n][key])
    best_model = max(model_cards, key=lambda n: results[n][key])
    beats = results[best_model][key] > results[best_baseline][key]
    card = {"split_at_ms": split.at_ms, "train_events": len(split.train), "test_events": len(split.test),
            "users_evaluated": users, "k": k, "results": results, "ndcg_curves": curves,
            "best_baseline": best_baseline, "best_model": best_model,
            "model_beats_best_baseline": beats, "model_cards": model_cards, "evaluation": summary or {}}
    (out / "evaluation.json").write_text(json.dumps(card, indent=1))

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for name, ys in curves.items():
        trained = name in model_cards
        ax.plot(range(1, len(ys) + 1), ys, marker="o" if trained else None, label=name,
                linewidth=2.5 if trained else 1.2, linestyle="-" if trained else "--")
    ax.set(xlabel="K", ylabel="NDCG@K", title="Next-period NDCG@K: models vs baselines")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ndcg_at_k.png", dpi=110)

    n_feat = max(len(c.get("feature_importance", {})) for c in model_cards.values())
    fig = Figure(figsize=(6 * len(model_cards), max(3, 0.25 * n_feat)))
    axes = fig.subplots(1, len(model_cards), squeeze=False)
    for ax, (name, mc) in zip(axes[0], model_cards.items()):
        imp = sorted(mc.get("feature_importance", {}).items(), key=lambda kv: kv[1])
        ax.barh([n for n, _ in imp], [v for _, v in imp])
        ax.set(xlabel="importance share (gain)", title=f"{name} {mc.get('version')}")
    fig.tight_layout()
    fig.savefig(out / "feature_importance.png", dpi=110)

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    if scored:
        s = np.array([x for x, _ in scored])
        y = np.array([v for _, v in scored], dtype=float)
        edges = np.unique(np.quantile(s, np.linspace(0, 1, 11)))
        idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, len(edges) - 2)
        mean_p = [s[idx == b].mean() for b in range(len(edges) - 1) if (idx == b).any()]
        rate = [y[idx == b].mean() for b in range(len(edges) - 1) if (idx == b).any()]
        ax.plot(mean_p, rate, marker="o", label="classifier")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    ax.set(xlabel="predicted P(interact)", ylabel="observed next-period rate",
           title="Calibration of the classifier (deciles)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=110)

    def cell(m: dict, c: str) -> str:
        ci = m.get(f"{c}_ci95")
        return "-" if m[c] is None else f"{m[c]:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")

    rows = "\n".join(f"| {n}{' (trained)' if n in model_cards else ''} | " + " | ".join(
        cell(m, c) for c in (key, f"hitrate_at_{k}", "mrr", "auc")) + " |" for n, m in results.items())
    summary = summary or {}
    cmp_ = summary.get("comparison", {})
    segs = summary.get("segments", {})
    names = list(results)
    seg_rows = "\n".join(f"| {seg} | {v['users']} | " + " | ".join(f"{v[n]:.4f}" for n in names) + " |"
                         for seg, v in segs.items())
    comparison = (f"{cmp_['best_model']} - {cmp_['best_baseline']} on NDCG@{k}: {cmp_['difference']:+.4f}, 95% "
                  f"interval [{cmp_['difference_ci95'][0]:+.4f}, {cmp_['difference_ci95'][1]:+.4f}] (bootstrap "
                  f"over users, paired); ratio {cmp_['ratio']}. Candidate recall (test items that were among "
                  f"the job's candidates at all): {summary.get('candidate_recall')}.") if cmp_ else ""
    models = "\n".join(f"- `{n}` {mc.get('version')}: {mc.get('model')}; holdout AUC {mc.get('holdout', {}).get('auc')}, "
                       f"ONNX parity {mc.get('onnx_parity_max_diff'):.1e}" for n, mc in model_cards.items())
    (out / "evaluation.md").write_text(f"""# Evaluation: trained models vs baselines

Split at {split.at_ms} ms: {len(split.train)} training events, {len(split.test)} test events,
{users} users evaluated (the job had a list for them at the split, and they interact after it).
Intervals are 95% bootstrap intervals over users.

{models}

| ranker | NDCG@{k} | HitRate@{k} | MRR | AUC |
|---|---|---|---|---|
{rows}

Best baseline: **{best_baseline}**; the best trained model, **{best_model}**,
{'beats' if beats else 'does not beat'} it on NDCG@{k}. {comparison}

NDCG@{k} by segment (past purchases before the split; "new": users the job had no list for):

| segment | users | {' | '.join(names)} |
|---|---|{'---|' * len(names)}
{seg_rows}

![NDCG@K](ndcg_at_k.png) ![feature importance](feature_importance.png) ![calibration](calibration.png)
""")
