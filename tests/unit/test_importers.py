"""Importing RetailRocket and UCI Online Retail files (small files written here in those formats)
and The Complete Journey (a slice of the real data, tests/data/completejourney): events in the
project's schema, time-ordered; categories as documented; every rejected row named with its line
number; nothing dropped silently."""

from __future__ import annotations

import csv
import json

import pytest

from contract.schema import validate
from contract.paths import PROJECT_ROOT
from traffic.importers import ImportFailed, description_category, import_file
from contract.paths import catalog_path

RR_EVENTS = """timestamp,visitorid,event,itemid,transactionid
1433222276276,599528,view,356475,
1433221332117,257597,view,355908,
1433224214164,257597,addtocart,355908,
1433224253325,257597,transaction,355908,4000
1433221999827,111016,teleport,248676,
not-a-time,111016,view,248676,
1433221999828,111016,view
1433223000000,has space,view,248676,
"""
RR_PROPS = """timestamp,itemid,property,value
1431226800000,355908,categoryid,1173
1441594800000,355908,categoryid,1174
1431226800000,356475,categoryid,491
1431226800000,356475,790,n1234.000
"""
RR_TREE = """categoryid,parentid
1174,805
805,
491,1679
1679,
"""
OR_ROWS = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850,United Kingdom
536365,71053,WHITE METAL LANTERN,6,12/1/2010 8:26,3.39,17850,United Kingdom
536366,22633,HAND WARMER UNION JACK,6,12/1/2010 8:28,1.85,17850.0,United Kingdom
C536379,D,Discount,-1,12/1/2010 9:41,27.5,14527,United Kingdom
536414,22139,,56,12/1/2010 11:52,0,,United Kingdom
536370,22728,ALARM CLOCK BAKELIKE PINK,24,yesterday,3.75,12583,France
536370,22727,ALARM CLOCK BAKELIKE RED,24,12/1/2010 8:45,3.75
536371,22086,PAPER CHAIN KIT 50'S CHRISTMAS,80,2010-12-01 09:00:00,2.55,13748,United Kingdom
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def events_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_retailrocket_events_categories_and_rejected_lines(tmp_path):
    out = tmp_path / "rr.jsonl"
    report = import_file(write(tmp_path, "events.csv", RR_EVENTS), "retailrocket", out,
                         item_properties=[str(write(tmp_path, "props.csv", RR_PROPS))],
                         category_tree=str(write(tmp_path, "tree.csv", RR_TREE)))
    events = events_of(out)
    assert [e["type"] for e in events] == ["view", "view", "add_to_cart", "purchase"]
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert all(validate(json.dumps(e)) for e in events)
    # latest categoryid (1174, not 1173) rolled up to its top-level ancestor 805; 491 -> 1679
    assert {e["item_id"]: e["category"] for e in events} == {"355908": "c805", "356475": "c1679"}
    assert [(line, reason) for line, reason, _ in report.rejected] == [
        (6, "unknown_event"), (7, "bad_timestamp"), (8, "column_count"), (9, "bad_user_id")]
    assert report.rows == 8 == report.events + len(report.rejected)
    rejected = list(csv.reader(open(f"{out}.rejected.csv")))
    assert rejected[0] == ["line", "reason", "row"] and [r[0] for r in rejected[1:]] == ["6", "7", "8", "9"]
    catalog = [json.loads(line) for line in catalog_path(out).read_text().splitlines()]
    assert {c["item_id"] for c in catalog} == {"355908", "356475"}


def test_retailrocket_without_properties_has_unknown_categories(tmp_path):
    out = tmp_path / "rr.jsonl"
    import_file(write(tmp_path, "events.csv", RR_EVENTS), "retailrocket", out)
    assert {e["category"] for e in events_of(out)} == {"unknown"}


def test_online_retail_purchases_values_categories_and_skips(tmp_path):
    out = tmp_path / "or.jsonl"
    report = import_file(write(tmp_path, "online_retail.csv", OR_ROWS), "online-retail", out)
    events = events_of(out)
    assert [(e["user_id"], e["item_id"], e["value"], e["category"]) for e in events] == [
        ("c17850", "85123A", 15.3, "holder"), ("c17850", "71053", 20.34, "lantern"),
        ("c17850", "22633", 11.1, "jack"), ("c13748", "22086", 204.0, "christmas")]
    assert all(e["type"] == "purchase" for e in events)
    assert events[0]["ts"] == 1291191960000  # 2010-12-01 08:26 UTC
    assert dict(report.skipped) == {"cancellation": 1, "no_customer": 1}
    assert [(line, reason) for line, reason, _ in report.rejected] == [(7, "bad_number_or_date"), (8, "column_count")]
    assert report.rows == report.events + len(report.rejected) + sum(report.skipped.values()) == 8
    prices = {json.loads(x)["item_id"]: json.loads(x)["price"] for x in catalog_path(out).read_text().splitlines()}
    assert prices["85123A"] == 2.55


def test_description_category():
    assert description_category("WHITE HANGING HEART T-LIGHT HOLDER") == "holder"
    assert description_category("PAPER CHAIN KIT 50'S CHRISTMAS") == "christmas"
    assert description_category("") == "unknown"


def test_wrong_format_names_the_missing_columns(tmp_path):
    with pytest.raises(ImportFailed, match="header lacks .*visitorid.*right --format"):
        import_file(write(tmp_path, "or.csv", OR_ROWS), "retailrocket", tmp_path / "x.jsonl")
    with pytest.raises(ImportFailed, match="give --item-properties too"):
        import_file(write(tmp_path, "e.csv", RR_EVENTS), "retailrocket", tmp_path / "x.jsonl",
                    category_tree=str(write(tmp_path, "tree.csv", RR_TREE)))
    with pytest.raises(ImportFailed, match="unknown format"):
        import_file(write(tmp_path, "or.csv", OR_ROWS), "csv", tmp_path / "x.jsonl")


CJ_SLICE = PROJECT_ROOT / "tests" / "data" / "completejourney"
CJ_HEADER = ("household_id,store_id,basket_id,product_id,quantity,sales_value,retail_disc,coupon_disc,"
             "coupon_match_disc,week,transaction_timestamp\n")
CJ_PRODUCTS = """product_id,manufacturer_id,department,brand,product_category,product_type,package_size
940996,69,GROCERY,Private,BAKED BREAD/BUNS/ROLLS,DIET/LIGHT BREAD,16 OZ
873902,69,KIOSK-GAS,Private,,GASOLINE,
"""


def test_completejourney_slice_events_users_and_categories(tmp_path):
    out = tmp_path / "cj.jsonl"
    report = import_file(CJ_SLICE / "transactions_sample.csv", "completejourney", out)
    with open(CJ_SLICE / "transactions_sample.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(CJ_SLICE / "products.csv", newline="") as f:
        products = {p["product_id"]: p for p in csv.DictReader(f)}
    bought = [r for r in rows if float(r["quantity"]) > 0]
    events = events_of(out)
    assert report.rows == len(rows) == report.events + len(report.rejected) + sum(report.skipped.values())
    assert len(events) == report.events == len(bought)
    assert report.users == len({f"h{r['household_id']}" for r in bought}) == len({e["user_id"] for e in events})
    assert {reason for _, reason, _ in report.rejected} == {"non_positive_quantity"}
    assert len(report.rejected) == len(rows) - len(bought) > 0  # the slice holds quantity-0 lines
    assert all(validate(json.dumps(e)) for e in events)
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert {e["type"] for e in events} == {"purchase"}

    def category(product_id):
        p = products.get(product_id)
        name = p and (p["product_category"] or p["department"])
        return "_".join(name.lower().split()) if name else "unknown"

    got = {e["item_id"]: e["category"] for e in events}
    assert got == {r["product_id"]: category(r["product_id"]) for r in bought}
    assert any(not products[i]["product_category"] for i in got)  # the department fallback is used
    assert sum(e["value"] for e in events) == pytest.approx(sum(float(r["sales_value"]) for r in bought))


def test_completejourney_bad_rows_are_rejected_with_line_and_reason(tmp_path):
    tx = write(tmp_path, "transactions.csv", CJ_HEADER + (
        "2261,309,31625220889,940996,2.0,3.86,0.43,0.0,0.0,5,2017-01-28 19:06:53\n"   # line 2: ok
        "2261,309,31625220889,940996,1.0,-1.20,0.0,0.0,0.0,5,2017-01-28 19:07:00\n"   # 3: negative value
        "2131,368,32053127496,873902,1.0,1.59,0.9,0.0,0.0,10,28/01/2017 7pm\n"        # 4: bad timestamp
        "2131,368,32053127496,873902,0.0,0.0,0.0,1.4,0.0,10,2017-03-01 03:31:57\n"    # 5: quantity 0
        "2131,368,32053127496,873902,1.0,x,0.9,0.0,0.0,10,2017-03-01 03:31:57\n"      # 6: bad number
        "2131,368,32053127496\n"                                                       # 7: column count
        "511,316,32445856036,847901,1.0,1.0,0.69,0.0,0.0,13,2017-03-26 17:22:21\n"))  # 8: ok, no product
    write(tmp_path, "products.csv", CJ_PRODUCTS)  # found beside the transactions
    out = tmp_path / "cj.jsonl"
    report = import_file(tx, "completejourney", out)
    assert [(line, reason) for line, reason, _ in report.rejected] == [
        (3, "negative_sales_value"), (4, "bad_timestamp"), (5, "non_positive_quantity"), (6, "bad_number"),
        (7, "column_count")]
    assert report.rows == 7 == report.events + len(report.rejected)
    assert [(e["user_id"], e["item_id"], e["value"], e["category"]) for e in events_of(out)] == [
        ("h2261", "940996", 3.86, "baked_bread/buns/rolls"), ("h511", "847901", 1.0, "unknown")]
    assert events_of(out)[0]["ts"] == 1485630413000  # 2017-01-28 19:06:53 UTC
    prices = {json.loads(x)["item_id"]: json.loads(x)["price"] for x in catalog_path(out).read_text().splitlines()}
    assert prices["940996"] == 1.93
    assert [r[:2] for r in csv.reader(open(f"{out}.rejected.csv"))][1:] == [
        ["3", "negative_sales_value"], ["4", "bad_timestamp"], ["5", "non_positive_quantity"], ["6", "bad_number"],
        ["7", "column_count"]]


def test_completejourney_products_option_and_missing_products(tmp_path):
    tx = write(tmp_path, "transactions.csv",
               CJ_HEADER + "2131,368,32053127496,873902,1.0,1.59,0.9,0.0,0.0,10,2017-03-01 03:31:57\n")
    elsewhere = tmp_path / "catalog"
    elsewhere.mkdir()
    with pytest.raises(ImportFailed, match="products.csv not found.*--products"):
        import_file(tx, "completejourney", tmp_path / "x.jsonl")
    out = tmp_path / "cj.jsonl"
    import_file(tx, "completejourney", out, products=str(write(elsewhere, "p.csv", CJ_PRODUCTS)))
    assert [e["category"] for e in events_of(out)] == ["kiosk-gas"]  # no product_category: the department
    with pytest.raises(ImportFailed, match="--products is completejourney's"):
        import_file(write(tmp_path, "or.csv", OR_ROWS), "online-retail", out, products=str(elsewhere / "p.csv"))


def test_events_before_2000_need_the_configured_bound(tmp_path):
    """MovieLens-era logs: a 1997 invoice is bad_ts by default and an event with the bound lowered
    (the job config's events.min_ts_ms, which the CLI passes)."""
    rows = ["InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country",
            "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,09/20/1997 08:26,2.55,17850,United Kingdom"]
    src = write(tmp_path, "old.csv", "\n".join(rows) + "\n")
    refused = import_file(src, "online-retail", tmp_path / "a.jsonl")
    assert refused.events == 0 and [r for _, r, _ in refused.rejected] == ["bad_ts"]
    lowered = import_file(src, "online-retail", tmp_path / "b.jsonl", min_ts_ms=874_724_710_000 - 86_400_000 * 30)
    assert lowered.events == 1 and events_of(tmp_path / "b.jsonl")[0]["ts"] == 874_743_960_000  # 1997-09-20 08:26 UTC
