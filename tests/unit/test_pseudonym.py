"""Pseudonymous user ids (privacy.pseudonymize): the shared vectors, the config's key checks, the
lookup core's stored ids through a key rotation, and the offline path pseudonymizing as the job."""

from __future__ import annotations

import json

import pytest

from contract.config import ConfigError, load_config
from contract.keys import pseudonym
from contract.paths import PROJECT_ROOT
from contract.serving_config import load_serving_config
from models.offline import read_history
from serving.core import LookupService

VECTORS = json.loads((PROJECT_ROOT / "tests" / "vectors" / "pseudonym.json").read_text())
ON = {"privacy.pseudonymize": True, "privacy.key_env": "SR_TEST_PSEUDONYM_KEY"}


def test_pseudonyms_give_the_shared_answers():
    for case in VECTORS["cases"]:
        assert pseudonym(case["user_id"], VECTORS["key"].encode()) == case["pseudonym"]
    got = [c["pseudonym"] for c in VECTORS["cases"]]
    assert len(set(got)) == len(got) and all(len(p) == 34 and p.startswith("p:") for p in got)


def test_the_key_is_named_long_enough_and_only_read_from_the_environment(monkeypatch):
    with pytest.raises(ConfigError, match="pseudonymize = true needs key_env"):
        load_config(None, {"privacy.pseudonymize": True})
    monkeypatch.setenv("SR_SHORT_KEY", "too-short")
    with pytest.raises(ConfigError, match="shorter than 32 bytes.*openssl rand -hex 32"):
        load_config(None, {**ON, "privacy.key_env": "SR_SHORT_KEY"}).privacy.keys()
    monkeypatch.setenv("SR_NON_ASCII_KEY", "é" * 40)
    with pytest.raises(ConfigError, match="SR_NON_ASCII_KEY, whose key is not ASCII"):
        load_config(None, {**ON, "privacy.key_env": "SR_NON_ASCII_KEY"}).privacy.keys()
    with pytest.raises(ConfigError, match="SR_UNSET_KEY, which is not set"):
        load_config(None, {**ON, "privacy.key_env": "SR_UNSET_KEY"}).privacy.keys()
    cfg = load_config(None, ON)
    assert cfg.privacy.keys() == [VECTORS["key"].encode()] and VECTORS["key"] not in cfg.model_dump_json()
    assert load_config(None, {"privacy.key_env": "SR_UNSET_KEY"}).privacy.keys() == []  # off: nothing read


def test_lookups_read_the_current_pseudonym_then_the_previous_one():
    rotating = load_serving_config(None, {**ON, "privacy.key_env": "SR_TEST_PSEUDONYM_KEY_NEW",
                                          "privacy.previous_key_env": "SR_TEST_PSEUDONYM_KEY"})
    new, old = (VECTORS["key"] + "-new").encode(), VECTORS["key"].encode()
    assert LookupService(rotating).stored_ids("u1") == [pseudonym("u1", new), pseudonym("u1", old)]
    assert LookupService(load_serving_config(None, ON)).stored_ids("u1") == [pseudonym("u1", old)]
    assert LookupService(load_serving_config(None)).stored_ids("u1") == ["u1"]


def test_the_offline_path_pseudonymizes_as_the_job_does(tmp_path):
    log = tmp_path / "h.jsonl"
    log.write_text("\n".join(json.dumps({"event_id": f"e{n}", "user_id": u, "item_id": "i1", "type": "view",
                                         "ts": 1_700_000_000_000 + n}) for n, u in enumerate(["u1", "u2", "u1"])))
    users = [e.user_id for e in read_history(log, load_config(None, ON)).events]
    key = VECTORS["key"].encode()
    assert users == [pseudonym("u1", key), pseudonym("u2", key), pseudonym("u1", key)]
    assert [e.user_id for e in read_history(log, load_config(None)).events] == ["u1", "u2", "u1"]
