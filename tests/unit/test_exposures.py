"""Exposure records: the Python front ends write the contract's shape, the same as lookupd
(tests/vectors/exposure.json; serving/lookupd/exposures_test.go)."""

from __future__ import annotations

import json

from contract import keys
from contract.exposures import EXPOSURE_FIELDS, ITEM_FIELDS, new_request_id
from contract.paths import PROJECT_ROOT
from serving import lookup
from serving.exposures import exposure_record

VECTOR = json.loads((PROJECT_ROOT / "tests" / "vectors" / "exposure.json").read_text())


def test_exposure_records_have_the_contracts_shape():
    a = VECTOR["answer"]
    rec = lookup.Recommendations(**{**a, "items": [keys.ScoredItem(**i) for i in a["items"]]})
    record = exposure_record(rec, VECTOR["stored_id"], VECTOR["interface"], VECTOR["served_at_ms"])
    assert json.loads(json.dumps(record)) == VECTOR["record"]
    assert tuple(record) == EXPOSURE_FIELDS and all(tuple(i) == ITEM_FIELDS for i in record["items"])


def test_request_ids_are_128_random_bits():
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and set(i) <= set("0123456789abcdef") for i in ids)
