"""Simulated traffic written in the public log formats `streamrank import` reads, so the whole
import -> train -> evaluate path can be run (and tested) without downloading the real files.

- **retailrocket** (a folder): `events.csv` (`timestamp,visitorid,event,itemid,transactionid`),
  `item_properties.csv` (`timestamp,itemid,property,value`: each item's leaf `categoryid`, plus a
  hashed-looking property like the real file's) and `category_tree.csv` (`categoryid,parentid`:
  every simulated category is a top-level category with three leaves). RetailRocket has no click
  event: simulated views and clicks are both written as `view`; add_to_cart -> `addtocart`,
  purchase -> `transaction` with a transaction id.
- **online-retail** (one CSV, UCI Online Retail columns): each simulated purchase is an invoice
  line; purchases of one user within the same minute share an invoice. Description ends with a
  per-category product noun, so the importer's last-word rule recovers the category. Customer ids
  are numeric as in the real file. Only purchases exist in this format.
"""

from __future__ import annotations

import csv
from datetime import datetime, UTC
from pathlib import Path

from tqdm import tqdm

from traffic.importers import ONLINE_RETAIL_COLUMNS, RETAILROCKET_COLUMNS
from traffic.simulator import Simulator

NOUNS = ("holder", "bag", "mug", "candle", "frame", "clock", "cushion", "lantern", "sign", "tin", "box",
         "card", "bottle", "doorstop", "ornament", "plate", "bowl", "basket", "apron", "umbrella")
ADJECTIVES = ("WHITE", "RED", "VINTAGE", "HANGING", "SET OF 3", "PAPER", "GLASS", "BLUE", "REGENCY", "JUMBO")
CUSTOMER_ID_BASE = 12000  # simulated user n is Online Retail customer 12000 + n (numeric, as in the real file)
RR_EVENT = {"view": "view", "click": "view", "add_to_cart": "addtocart", "purchase": "transaction"}


def category_noun(category_index: int) -> str:
    """A product noun per category; past the list, the noun gets a letter suffix (still alphabetic)."""
    base = NOUNS[category_index % len(NOUNS)]
    rounds = category_index // len(NOUNS)
    return base if rounds == 0 else base + "s" * rounds


def numeric_id(sim_id: str) -> str:
    """RetailRocket ids are plain numbers: 'u00042' -> '42', 'i00000' -> '0'."""
    return sim_id[1:].lstrip("0") or "0"


def write_retailrocket(sim: Simulator, out_dir: Path, count: int, rate_per_s: float, start_ms: int,
                       progress: bool = True) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    events = 0
    transactions = 0
    with open(out_dir / "events.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RETAILROCKET_COLUMNS)
        for ev in tqdm(sim.events(start_ms, rate_per_s, count), total=count, desc="writing events.csv",
                       unit="ev", disable=not progress):
            kind = RR_EVENT[ev["type"]]
            tid = ""
            if kind == "transaction":
                transactions += 1
                tid = str(transactions)
            w.writerow([ev["ts"], numeric_id(ev["user_id"]), kind, numeric_id(ev["item_id"]), tid])
            events += 1
    n_cat = len(sim.categories)
    with open(out_dir / "category_tree.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["categoryid", "parentid"])
        for c in range(n_cat):
            w.writerow([1000 + c, ""])
            for leaf in range(3):
                w.writerow([2000 + 3 * c + leaf, 1000 + c])
    with open(out_dir / "item_properties.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "itemid", "property", "value"])
        for n, item in enumerate(sim.items):
            c = sim.categories.index(item.category)
            item_id = numeric_id(item.item_id)
            w.writerow([start_ms, item_id, "categoryid", 2000 + 3 * c + n % 3])
            w.writerow([start_ms, item_id, "790", f"n{int(item.price * 1000)}.000"])
    return {"format": "retailrocket", "events": events, "transactions": transactions, "items": len(sim.items),
            "categories": n_cat, "files": [str(out_dir / n) for n in
                                           ("events.csv", "item_properties.csv", "category_tree.csv")]}


def write_online_retail(sim: Simulator, path: Path, count: int, rate_per_s: float, start_ms: int,
                        progress: bool = True) -> dict:
    """Simulate `count` events; write their purchases as invoice lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    invoices: dict[tuple[str, int], int] = {}
    lines = 0
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(ONLINE_RETAIL_COLUMNS)
        for ev in tqdm(sim.events(start_ms, rate_per_s, count), total=count, desc=f"writing {path.name}",
                       unit="ev", disable=not progress):
            if ev["type"] != "purchase":
                continue
            minute = ev["ts"] // 60_000
            invoice = invoices.setdefault((ev["user_id"], minute), 536365 + len(invoices))
            item = sim.items[int(ev["item_id"][1:])]
            c = sim.categories.index(item.category)
            adjective = ADJECTIVES[int(ev["item_id"][1:]) % len(ADJECTIVES)]
            when = datetime.fromtimestamp(minute * 60, tz=UTC).strftime("%m/%d/%Y %H:%M")
            quantity = 1 + int(ev["item_id"][-1]) % 6
            w.writerow([invoice, ev["item_id"].upper(), f"{adjective} {category_noun(c).upper()}", quantity, when,
                        f"{item.price:.2f}", CUSTOMER_ID_BASE + int(ev["user_id"][1:]), "United Kingdom"])
            lines += 1
    return {"format": "online-retail", "events_simulated": count, "invoice_lines": lines,
            "invoices": len(invoices), "file": str(path)}
