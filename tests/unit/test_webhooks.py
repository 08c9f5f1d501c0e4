"""Webhook signatures and the checks made before anything is sent (no Kafka, Redis or receiver)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app
from contract.config import WebhooksConfig
from contract.webhooks import Endpoint, event, sign, verify
from serving.webhooks import Deliverer

BODY = b'{"type":"list_changed"}'


def test_a_signature_verifies_only_for_its_secret_body_and_time():
    header = sign("whsec_a", 1_000, BODY)
    assert verify("whsec_a", header, BODY, now=1_010)
    assert not verify("whsec_b", header, BODY, now=1_010)
    assert not verify("whsec_a", header, BODY + b" ", now=1_010)
    assert not verify("whsec_a", header, BODY, now=1_000 + 301)  # replayed too late


@pytest.mark.parametrize("header", ["", "t=,v1=", "t=1000", "v1=" + "0" * 64, "t=x,v1=" + "0" * 64,
                                    "t=1000,v1=" + "0" * 63, "t=1000,v1=" + "0" * 64 + "\n",
                                    "t=1000,v1=" + "G" * 64, "t=99999999999999,v1=" + "0" * 64])
def test_a_header_that_is_not_a_signature_is_false_not_an_error(header):
    assert verify("whsec_a", header, BODY, now=1_000) is False


@pytest.mark.parametrize("url", ["http://[::1", "ftp://cms.example/hook"])
def test_a_url_no_attempt_can_reach_is_refused_at_once_not_retried(url):
    slept: list[float] = []
    deliverer = Deliverer(WebhooksConfig(max_attempts=5), sleep=slept.append)
    outcome = deliverer.deliver(Endpoint("ep1", url, ("list_changed",), "whsec_a"),
                                event("list_changed", "u1", 1_000, {}))
    assert (outcome.delivered, outcome.attempts, slept) == (False, 1, [])
    assert "URL" in outcome.error or "Protocol" in outcome.error


@pytest.mark.parametrize("url", ["cms.example/hook", "ftp://cms.example/hook", "http://", "http://[::1"])
def test_webhooks_add_refuses_a_url_it_could_never_post_to(url):
    out = CliRunner().invoke(app, ["webhooks", "add", url], env={"COLUMNS": "300"})
    assert out.exit_code == 2, out.output
    assert "http:// or https://" in out.output
