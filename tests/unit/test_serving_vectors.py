"""The serving guards of serving/core.py (circuit breaker, Redis read budget, status names) against
the shared vectors in tests/vectors/serving.json. lookupd is held to the same file by its
`go test` (serving_test.go), which tests/unit/test_lookupd_go.py runs."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from serving import lookup
from serving.core import Breaker, CallerDeadline, StoreUnavailable, read_budget, status_of
from serving.launch import contract_spec

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "serving.json").read_text())

FAILURES = {"none": None, "invalid_request": lookup.InvalidRequest("user_id is empty"),
            "store_unavailable": StoreUnavailable("circuit breaker open"), "caller_deadline": CallerDeadline(0.0),
            "other": ValueError("stored list is not JSON")}


@pytest.mark.parametrize("case", VECTORS["breaker"], ids=[c["name"] for c in VECTORS["breaker"]])
def test_breaker_follows_the_shared_steps(case):
    now = [0.0]
    b = Breaker(case["failures"], case["reset_s"], clock=lambda: now[0])
    for n, step in enumerate(case["steps"]):
        now[0] = step["at_s"]
        result = {"allow": b.allow, "success": b.success, "failure": b.failure, "abandon": b.abandon}[step["op"]]()
        assert (result, b.state) == (step.get("result"), step["state"]), f"step {n}: {step}"


@pytest.mark.parametrize("case", VECTORS["read_budget"], ids=[c["name"] for c in VECTORS["read_budget"]])
def test_read_budget_follows_the_shared_cases(case):
    budget = read_budget(case["redis_timeout_s"], case["remaining_s"], VECTORS["contract"]["deadline_reserve_s"])
    assert budget >= 0 and budget == pytest.approx(case["expect_budget_s"], abs=1e-9)


@pytest.mark.parametrize("case", VECTORS["status"], ids=[c["kind"] for c in VECTORS["status"]])
def test_status_names_follow_the_shared_cases(case):
    assert status_of(FAILURES[case["kind"]]) == case["expect_status_name"]


def test_code_names_are_grpc_status_codes():
    """serving_test.go checks lookupd's codeName of each wire number against these names."""
    assert {name: grpc.StatusCode[name].value[0] for name in VECTORS["code_names"]} == VECTORS["code_names"]


def test_the_vectors_contract_is_the_one_lookupd_is_given():
    """serving_test.go budgets with the vectors' reserve; it must be what `streamrank serve` hands
    lookupd, and what serving.core reserves by default."""
    given = contract_spec()
    assert {k: given[k] for k in VECTORS["contract"]} == VECTORS["contract"]
    assert read_budget(1.0, 1.0) == pytest.approx(1.0 - VECTORS["contract"]["deadline_reserve_s"])
