"""Write tests/vectors/compact.json: one packed value of each kind and its JSON text, which
tests/unit/test_compact.py and serving/lookupd/codec_test.go both decode.

    python tests/vectors/make_compact.py
"""

import base64
import json
from pathlib import Path

from contract import compact, keys
from udfs.features import UserState

state = UserState(window_end=1_733_000_002_000, feature_ts=1_733_000_001_500, affinity={"c07": 0.25},
                  items={"i00042": 1.0}, seen={"866250000": "e000000001 e000000002"},
                  memory={"i00042": [1.0, 1.0, 0.0, 1_733_000_001_500.0, 0.0, 0.0]})
rec = keys.RecList([keys.ScoredItem("i00042", 0.93, "c07", ("bought_before", "trending_in:c07")),
                    keys.ScoredItem("i00113", 0.5, "c02")], "v0003", 1_733_000_001_500,
                   written_at=1_733_000_002_100, segments=["loyal"])
profile = keys.Profile({"views_1h": 3.0, "spend_7d": 12.5}, ["c07", "c02"], 1_733_000_001_500, 1_733_000_002_000,
                       ["loyal"])
values = []
for kind, value in (("feat", state), ("rec", rec), ("profile", profile)):
    text = value.encode()
    packed = compact.pack(kind, value.feature_ts, text)
    values.append({"kind": kind, "feature_ts": value.feature_ts, "text": text,
                   "packed": base64.b64encode(packed).decode()})
out = Path(__file__).with_name("compact.json")
out.write_text(json.dumps({"about": "one packed value of each kind (contract.compact) and its JSON text; made by tests/vectors/make_compact.py", "dictionaries": "contract/dicts", "values": values},
                          indent=1) + "\n")
