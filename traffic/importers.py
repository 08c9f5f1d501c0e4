"""Import public e-commerce event logs into streamrank's event schema (contract/schema.py).

Formats:

- **retailrocket**: `events.csv` with `timestamp,visitorid,event,itemid,transactionid`. Events are
  `view` -> view, `addtocart` -> add_to_cart, `transaction` -> purchase. Optional
  `item_properties*.csv` (`timestamp,itemid,property,value`): an item's category is its latest
  `categoryid` value. With `category_tree.csv` (`categoryid,parentid`), the category is rolled up to
  its top-level ancestor, which gives a few hundred categories instead of about 1,600 leaves.
  RetailRocket publishes no usable price (property values are hashed), so `value` is 0.
- **online-retail** (UCI Online Retail): `InvoiceNo,StockCode,Description,Quantity,InvoiceDate,
  UnitPrice,CustomerID,Country`. Each invoice line is a purchase with value Quantity x UnitPrice.
  The file has no categories, so the category is derived from the description: its last word,
  lower-cased (the product noun in this catalog: "... T-LIGHT HOLDER" -> `holder`, "... LUNCH BAG"
  -> `bag`). Cancellations (InvoiceNo starting with C) and lines without a CustomerID are skipped
  and counted (they cannot be personalized), never silently.
- **completejourney** (84.51° / dunnhumby The Complete Journey): `transactions*.csv` with
  `household_id,store_id,basket_id,product_id,quantity,sales_value,...,transaction_timestamp`
  (`2017-01-28 19:06:53`, read as UTC). Each line is a purchase by user `h<household_id>` with value
  sales_value (the price is sales_value / quantity). The category is the product's
  `product_category` in `products.csv` (`--products`; default: `products.csv` beside the
  transactions), else its `department`, else `unknown`, lower-cased with spaces as `_`
  ("BAKED BREAD/BUNS/ROLLS" -> `baked_bread/buns/rolls`). Lines with quantity 0 (a few hundred in
  the sample, nearly all with sales_value 0: nothing was bought) are rejected as
  `non_positive_quantity`; a negative sales_value as `negative_sales_value`.

Every row that cannot become an event is reported with its line number and reason. The events come
out sorted by event time (the job's watermark expects a roughly ordered stream), with stable
event_ids (see row_id).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from contract.schema import InvalidEvent, MIN_TS_MS, validate
from contract.paths import catalog_path

FORMATS = ("retailrocket", "online-retail", "completejourney")
RETAILROCKET_EVENTS = {"view": "view", "addtocart": "add_to_cart", "transaction": "purchase"}
RETAILROCKET_COLUMNS = ["timestamp", "visitorid", "event", "itemid", "transactionid"]
ONLINE_RETAIL_COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice",
                         "CustomerID", "Country"]
COMPLETEJOURNEY_COLUMNS = ["household_id", "product_id", "quantity", "sales_value", "transaction_timestamp"]
COMPLETEJOURNEY_PRODUCT_COLUMNS = ["product_id", "department", "product_category"]
DATE_FORMATS = ("%m/%d/%Y %H:%M", "%m/%d/%y %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%d/%m/%Y %H:%M")


class ImportFailed(ValueError):
    """The file as a whole cannot be imported (wrong format, missing header)."""


@dataclass
class ImportReport:
    rows: int = 0
    events: int = 0
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # (line, reason, row)
    skipped: Counter = field(default_factory=Counter)  # reason -> count (valid rows not usable)
    users: int = 0
    items: int = 0
    first_ts: int = 0
    last_ts: int = 0
    min_ts_ms: int = MIN_TS_MS  # the earliest event time accepted (the job config's events.min_ts_ms)

    def summary(self) -> dict:
        return {"rows": self.rows, "events": self.events, "rejected": len(self.rejected),
                "rejected_by_reason": dict(Counter(r for _, r, _ in self.rejected)),
                "skipped": dict(self.skipped), "users": self.users, "items": self.items,
                "first_ts": self.first_ts, "last_ts": self.last_ts}


def _rows(path: Path, expected: list[str], desc: str) -> Iterator[tuple[int, dict | None, str]]:
    """(line number, row dict or None when the column count is wrong, raw line) after the header."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip().lstrip("\ufeff") for h in next(reader)]
        except StopIteration:
            raise ImportFailed(f"{path} is empty; expected a header {','.join(expected)}") from None
        missing = [c for c in expected if c not in header]
        if missing:
            raise ImportFailed(f"{path}: header lacks {', '.join(missing)}; expected {','.join(expected)} "
                               f"(is this the right --format?)")
        for values in tqdm(reader, desc=desc, unit="row", mininterval=1, disable=None):
            line = reader.line_num
            raw = ",".join(values)
            if len(values) != len(header):
                yield line, None, raw
            else:
                yield line, dict(zip(header, values)), raw


def retailrocket_categories(properties: list[Path], tree: Path | None) -> dict[str, str]:
    """itemid -> category (latest categoryid, rolled up to the top-level ancestor with a tree)."""
    latest: dict[str, tuple[int, str]] = {}
    for path in properties:
        for _, row, _ in _rows(path, ["timestamp", "itemid", "property", "value"], f"reading {path.name}"):
            if row is None or row["property"] != "categoryid":
                continue
            try:
                ts = int(row["timestamp"])
            except ValueError:
                continue
            if row["itemid"] not in latest or ts >= latest[row["itemid"]][0]:
                latest[row["itemid"]] = (ts, row["value"].strip())
    parent: dict[str, str] = {}
    if tree is not None:
        for _, row, _ in _rows(tree, ["categoryid", "parentid"], f"reading {tree.name}"):
            if row is not None and row["parentid"].strip():
                parent[row["categoryid"].strip()] = row["parentid"].strip()

    def top(c: str) -> str:
        seen = set()
        while c in parent and c not in seen:
            seen.add(c)
            c = parent[c]
        return c

    return {item: f"c{top(cat)}" for item, (_, cat) in latest.items()}


def read_retailrocket(path: Path, report: ImportReport, categories: dict[str, str] | None = None
                      ) -> Iterator[dict]:
    for line, row, raw in _rows(path, RETAILROCKET_COLUMNS, f"reading {path.name}"):
        report.rows += 1
        if row is None:
            report.rejected.append((line, "column_count", raw))
            continue
        etype = RETAILROCKET_EVENTS.get(row["event"].strip())
        if etype is None:
            report.rejected.append((line, "unknown_event", raw))
            continue
        try:
            ts = int(row["timestamp"])
        except ValueError:
            report.rejected.append((line, "bad_timestamp", raw))
            continue
        user, item = row["visitorid"].strip(), row["itemid"].strip()
        event = {"event_id": row_id("rr", raw), "user_id": user, "item_id": item,
                 "type": etype, "ts": ts, "category": (categories or {}).get(item, "unknown")}
        yield from _checked(event, line, raw, report)


def row_id(prefix: str, raw: str) -> str:
    """A stable event_id from the row's content: a re-import gives the same ids, and an exact
    duplicate row (both public files have some) gets its original's id, so the job counts it as a
    duplicate instead of using it twice."""
    return f"{prefix}-{hashlib.blake2b(raw.encode(), digest_size=10).hexdigest()}"


def _date_ms(text: str) -> int:
    for fmt in DATE_FORMATS:
        try:
            return int(datetime.strptime(text.strip(), fmt).replace(tzinfo=UTC).timestamp() * 1000)
        except ValueError:
            continue
    raise ValueError(text)


def description_category(description: str) -> str:
    words = [w for w in description.strip().lower().replace(",", " ").split() if w.isalpha()]
    return words[-1] if words else "unknown"


def read_online_retail(path: Path, report: ImportReport) -> Iterator[dict]:
    for line, row, raw in _rows(path, ONLINE_RETAIL_COLUMNS, f"reading {path.name}"):
        report.rows += 1
        if row is None:
            report.rejected.append((line, "column_count", raw))
            continue
        invoice = row["InvoiceNo"].strip()
        if invoice.upper().startswith("C"):
            report.skipped["cancellation"] += 1
            continue
        customer = row["CustomerID"].strip()
        if not customer:
            report.skipped["no_customer"] += 1
            continue
        try:
            quantity, price = float(row["Quantity"]), float(row["UnitPrice"])
            ts = _date_ms(row["InvoiceDate"])
        except ValueError:
            report.rejected.append((line, "bad_number_or_date", raw))
            continue
        if quantity <= 0 or price < 0:
            report.rejected.append((line, "non_positive_quantity_or_negative_price", raw))
            continue
        if customer.endswith(".0"):
            customer = customer[:-2]
        event = {"event_id": row_id("or", raw), "user_id": f"c{customer}", "item_id": row["StockCode"].strip(),
                 "type": "purchase", "ts": ts, "value": round(quantity * price, 4),
                 "category": description_category(row["Description"]), "_price": price}
        yield from _checked(event, line, raw, report)


def completejourney_categories(products: Path) -> dict[str, str]:
    """product_id -> category: product_category, else department, as an identifier-like name."""
    categories = {}
    for _, row, _ in _rows(products, COMPLETEJOURNEY_PRODUCT_COLUMNS, f"reading {products.name}"):
        if row is None:
            continue
        name = row["product_category"].strip() or row["department"].strip()
        if name:
            categories[row["product_id"].strip()] = "_".join(name.lower().split())
    return categories


def read_completejourney(path: Path, report: ImportReport, categories: dict[str, str]) -> Iterator[dict]:
    for line, row, raw in _rows(path, COMPLETEJOURNEY_COLUMNS, f"reading {path.name}"):
        report.rows += 1
        if row is None:
            report.rejected.append((line, "column_count", raw))
            continue
        try:
            quantity, value = float(row["quantity"]), float(row["sales_value"])
            if not (math.isfinite(quantity) and math.isfinite(value)):
                raise ValueError("nan or inf")
        except ValueError:
            report.rejected.append((line, "bad_number", raw))
            continue
        try:
            ts = _date_ms(row["transaction_timestamp"])
        except ValueError:
            report.rejected.append((line, "bad_timestamp", raw))
            continue
        if quantity <= 0:
            report.rejected.append((line, "non_positive_quantity", raw))
            continue
        if value < 0:
            report.rejected.append((line, "negative_sales_value", raw))
            continue
        item = row["product_id"].strip()
        event = {"event_id": row_id("cj", raw), "user_id": f"h{row['household_id'].strip()}", "item_id": item,
                 "type": "purchase", "ts": ts, "value": value, "category": categories.get(item, "unknown"),
                 "_price": round(value / quantity, 4)}
        yield from _checked(event, line, raw, report)


def _checked(event: dict, line: int, raw: str, report: ImportReport) -> Iterator[dict]:
    """The event if the project's own validator accepts it, else a rejected row with its reason."""
    try:
        validate(json.dumps({k: v for k, v in event.items() if not k.startswith("_")}), min_ts_ms=report.min_ts_ms)
    except InvalidEvent as e:
        report.rejected.append((line, e.reason, raw))
        return
    yield event


def import_file(path: str | Path, fmt: str, out: str | Path, *, item_properties: list[str] = (),
                category_tree: str | None = None, products: str | None = None,
                min_ts_ms: int = MIN_TS_MS) -> ImportReport:
    """Reads `path` in `fmt`, writes the events (time-ordered JSONL) to `out`, the catalog beside it
    (traffic.publish.catalog_path) and the rejected rows to `<out>.rejected.csv`. `products` is
    completejourney's products.csv (default: the one beside `path`). Events before min_ts_ms are
    rejected as bad_ts (pass the job config's events.min_ts_ms for logs older than 2000)."""
    if fmt not in FORMATS:
        raise ImportFailed(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    path, out = Path(path), Path(out)
    report = ImportReport(min_ts_ms=min_ts_ms)
    if category_tree and not item_properties:
        raise ImportFailed("a category tree maps the categoryid values of item properties; give --item-properties too")
    if products and fmt != "completejourney":
        raise ImportFailed(f"--products is completejourney's products.csv; format {fmt} has no use for it")
    if fmt == "retailrocket":
        cats = retailrocket_categories([Path(p) for p in item_properties],
                                       Path(category_tree) if category_tree else None) if item_properties else None
        events = list(read_retailrocket(path, report, cats))
    elif fmt == "completejourney":
        products_file = Path(products) if products else path.parent / "products.csv"
        if not products_file.exists():
            raise ImportFailed(f"{products_file} not found: completejourney takes its categories from products.csv; "
                               "give its path with --products")
        events = list(read_completejourney(path, report, completejourney_categories(products_file)))
    else:
        events = list(read_online_retail(path, report))
    events.sort(key=lambda e: (e["ts"], e["event_id"]))
    catalog: dict[str, dict] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for e in events:
            price = e.pop("_price", 0.0)
            catalog[e["item_id"]] = {"item_id": e["item_id"], "category": e["category"], "price": price}
            f.write(json.dumps(e, separators=(",", ":")) + "\n")
    catalog_path(out).write_text("".join(json.dumps(c) + "\n" for c in catalog.values()))
    with open(f"{out}.rejected.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["line", "reason", "row"])
        w.writerows(report.rejected)
    report.events = len(events)
    report.users = len({e["user_id"] for e in events})
    report.items = len(catalog)
    report.first_ts = events[0]["ts"] if events else 0
    report.last_ts = events[-1]["ts"] if events else 0
    assert report.rows == report.events + len(report.rejected) + sum(report.skipped.values())
    return report
