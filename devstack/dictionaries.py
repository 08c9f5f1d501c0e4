"""Train the zstd dictionaries the per-user values are packed with (contract.compact).

    python -m devstack.dictionaries [--users 3000] [--events 150000] [--out contract/dicts]

Samples are what the job writes, made the job's way: a simulated log folded by the offline
replay (the job's own feature functions) gives the states (feat:) and profiles (profile:), and
each user's candidates, ranked and given their fact reasons, the lists (rec:). Users of every
activity level are in the sample: the log runs at several densities. Each dictionary gets the next
free id of its kind (1000 x kind + n): a dictionary is never changed once values are written with
it. The figures (packed size per value against JSON, on users the dictionary was not trained on)
go to stdout as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import zstandard

from contract import compact, keys
from contract.config import load_config
from contract.paths import PROJECT_ROOT
from contract.schema import Interaction
from contract.segments import Segments
from models.offline import OfflineReplay
from traffic.simulator import Simulator
from udfs.features import profile
from udfs.reasons import ReasonFacts

KIND_BASE = {"feat": 1000, "profile": 2000, "rec": 3000}
DICT_SIZE = 16384


def simulated_values(users: int, events: int, seed: int) -> dict[str, list[bytes]]:
    """feat, profile and rec values of the simulated users, as the job would write them."""
    cfg = load_config(PROJECT_ROOT / "deploy" / "config" / "local.toml")
    segments = Segments.of_config(cfg)
    out: dict[str, list[bytes]] = {k: [] for k in compact.KINDS}
    now = int(time.time() * 1000)
    # three densities: a user with a handful of events, a regular one, a heavy one
    for part, rate in enumerate((events / 3600, events / 600, events / 120)):
        sim = Simulator(seed=seed + part, users=users // 3, items=5000, categories=30)
        log = [Interaction(d["event_id"], f"{d['user_id']}-{part}", d["item_id"], d["type"], int(d["ts"]),
                           float(d.get("value") or 0.0), d.get("category") or "", True)
               for d in sim.events(now - 7_200_000, rate, events // 3)]
        log.sort(key=lambda e: e.ts)
        replay = OfflineReplay(cfg)
        for _ in replay.run(log):
            pass
        pool = replay.candidate_pool()
        boards = {c: {i for i, _ in top} for c, top in pool.category_top.items()}
        for state in replay.states.values():
            named = profile(state, cfg.features, segments=segments)
            out["feat"].append(state.encode().encode())
            out["profile"].append(named.encode().encode())
            cands = replay.candidates(pool, state)
            facts = ReasonFacts(state, len(cfg.features.memory_half_lives_s), boards,
                                int(cfg.scoring.reasons_recent_s * 1000))
            ranked = sorted(cands, key=lambda c: -(c.popularity + state.affinity.get(c.category, 0.0)))
            top = ranked[: cfg.scoring.top_k]
            rec = keys.RecList([keys.ScoredItem(c.item_id, 1.0 - n / (len(top) + 1) + (hash(c.item_id) % 997) / 1e7,
                                                c.category, facts.of(c.item_id)) for n, c in enumerate(top)],
                               "v0001-" + "%08x" % (seed * 2654435761 % 2**32), state.feature_ts, now,
                               segments=named.segments)
            out["rec"].append(rec.encode().encode())
    return out


def next_id(kind: str, out: Path) -> int:
    taken = [int(p.stem.split("-")[1]) for p in out.glob(f"{kind}-*.zdict")]
    return max(taken, default=KIND_BASE[kind]) + 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=3000, help="simulated users (a third at each density)")
    p.add_argument("--events", type=int, default=150_000)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--out", default=str(compact.DICT_DIR), help="where the <kind>-<id>.zdict files go")
    p.add_argument("--kinds", nargs="+", default=list(compact.KINDS), choices=compact.KINDS)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    values = simulated_values(args.users, args.events, args.seed)
    held_out = simulated_values(max(args.users // 3, 300), args.events // 3, args.seed + 100)
    report: dict[str, object] = {}
    for kind in args.kinds:
        dict_id = next_id(kind, out)
        d = zstandard.train_dictionary(DICT_SIZE, values[kind], dict_id=dict_id, level=compact.LEVEL)
        path = out / f"{kind}-{dict_id}.zdict"
        path.write_bytes(d.as_bytes())
        c = zstandard.ZstdCompressor(level=compact.LEVEL, dict_data=d)
        plain = zstandard.ZstdCompressor(level=compact.LEVEL)
        sample = held_out[kind]
        report[kind] = {"dict_id": dict_id, "file": str(path), "trained_on": len(values[kind]),
                        "json_bytes": round(statistics.mean(map(len, sample))),
                        "zstd_bytes": round(statistics.mean(len(plain.compress(v)) for v in sample)),
                        "zstd_dict_bytes": round(statistics.mean(len(c.compress(v)) for v in sample))}
        print(f"{kind}: {path} {report[kind]}", flush=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
