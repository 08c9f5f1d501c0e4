"""How far a ranker could go on a simulated Online Retail log: the simulator's own generative model
used as a ranker, beside the repeat baseline and the job's candidates, on the split `evaluate`
makes.

    python -m bench.generative_ceiling --history H.jsonl --users 3000 --items 4000 --rate 0.03
        [--seed 7] [--replenishment 0.3] [--train-fraction 0.8]

H is the imported log (`streamrank import X.csv --format online-retail --out H.jsonl`) of
`streamrank simulate --history X.csv --format online-retail` run with the same --users, --items,
--rate, --seed and --replenishment. For each user the ranker scores every item by P(bought in the
test span) from what the simulator hides (staples and their intervals, favourites, category
interests, in-category popularity, prices, funnel rates) and the purchase times before the split
only. `generative_ndcg_at_10` ranks the whole catalog; `generative_in_candidates_ndcg_at_10`
reorders the job's candidates only (the most the job's ranking could reach with them). The last
stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from contract.config import load_config
from models.evaluation import Baselines, metrics, rank_users, relevant_items, split_by_time
from models.offline import read_history
from models.training import build_training_set
from traffic.formats import CUSTOMER_ID_BASE
from traffic.simulator import FIRST_BUY, RESTOCK_BUY, Simulator

EVENTS_PER_SESSION = 6.0  # views with their funnel steps, plus restocks: the session count's scale
VIEWS_PER_SESSION = 4.0  # 1..7 views


def generative_ranker(sim: Simulator, split, horizon_ms: int, rate_per_s: float):
    """user id ("c<customer>") -> the catalog ordered by P(bought in the horizon after the split)."""
    last_buy = {(e.user_id, e.item_id): e.ts for e in split.train if e.type == "purchase"}
    sessions = rate_per_s * horizon_ms / 1000 / EVENTS_PER_SESSION
    zipf = np.empty(len(sim.items))
    category = np.empty(len(sim.items), dtype=int)
    for c, members in enumerate(sim.by_category):
        zipf[members] = sim.cat_weights[c]
        category[members] = c
    prices = np.array([it.price for it in sim.items])
    ids = [it.item_id.upper() for it in sim.items]  # the Online Retail StockCode

    def scores(user_id: str) -> np.ndarray:
        n = int(user_id[1:]) - CUSTOMER_ID_BASE
        u = sim.users[n]
        n_s = sessions * sim.user_activity[n]
        view = 0.75 * u.interests[category] * zipf
        for f in u.favourites:
            view[f] += 0.25 / len(u.favourites)
        buy = 0.35 * (0.4 * np.minimum(1.0, u.spend / np.maximum(prices, 1.0)) + 0.05) * (u.buy_rate + 0.3)
        p = 1 - np.exp(-n_s * VIEWS_PER_SESSION * view * buy)
        for idx, interval in u.staples.items():
            bought = last_buy.get((user_id, ids[idx]))
            if bought is None:
                staple = 1 - (1 - FIRST_BUY) ** n_s
            else:  # due within the horizon, and a session after it is due
                left = max(0.0, split.at_ms + horizon_ms - max(bought + interval, split.at_ms)) / horizon_ms
                staple = RESTOCK_BUY * (1 - math.exp(-n_s * left)) if left > 0 else 0.0
            p[idx] = 1 - (1 - p[idx]) * (1 - staple)
        return p

    def rank(user_id: str) -> list[str]:
        return [ids[i] for i in np.argsort(-scores(user_id), kind="stable")[:200]]

    return rank, scores, {x: n for n, x in enumerate(ids)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--history", required=True, help="the imported JSONL of the simulated Online Retail CSV")
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--items", type=int, required=True)
    p.add_argument("--rate", type=float, required=True, help="the simulation's events per second of event time")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--categories", type=int, default=20)
    p.add_argument("--replenishment", type=float, default=0.3)
    p.add_argument("--train-fraction", type=float, default=0.8)
    p.add_argument("--preset", default="retail-purchases", help="the config preset evaluate uses for the format")
    args = p.parse_args()


    sim = Simulator(seed=args.seed, users=args.users, items=args.items, categories=args.categories,
                    replenishment=args.replenishment)
    cfg = load_config(None, None, args.preset)
    hist = read_history(args.history, cfg)
    split = split_by_time(hist.events, args.train_fraction)
    horizon = hist.events[-1].ts - split.at_ms
    ts = build_training_set(split.train, cfg, horizon_s=horizon / 1000, replay_to_end=True)
    replay = ts.replay
    known = {u for u, s in replay.states.items() if s.personalized()}
    truth = {u: r for u, r in relevant_items(split.test).items() if u in known}
    rank, scores, index = generative_ranker(sim, split, horizon, args.rate)
    pool = replay.candidate_pool()

    def in_candidates(user_id: str) -> list[str]:
        p_user = scores(user_id)
        cands = [c.item_id for c in replay.candidates(pool, replay.states[user_id]) if c.item_id in index]
        return sorted(cands, key=lambda i: (-p_user[index[i]], i))

    base = Baselines.fit(split.train, split.at_ms).rankers()
    res = metrics(rank_users({"repeat": base["repeat"], "generative": rank, "in_candidates": in_candidates},
                             truth), truth)
    out = {"users_evaluated": len(truth), "repeat_ndcg_at_10": res["repeat"]["ndcg_at_10"],
           "generative_ndcg_at_10": res["generative"]["ndcg_at_10"],
           "generative_in_candidates_ndcg_at_10": res["in_candidates"]["ndcg_at_10"]}
    out["generative_over_repeat"] = round(out["generative_ndcg_at_10"] / out["repeat_ndcg_at_10"], 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
