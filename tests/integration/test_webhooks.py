"""Webhooks on real parts: Kafka (the events and dead-letter topics), Redis (the endpoints), the
delivery worker (`streamrank webhooks deliver`, as a process where it is killed) and a real local
HTTP receiver that verifies signatures and honours Idempotency-Key. The job's side (which events a
batch makes, and that a replay makes the same ids) is at the end."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from cli.main import app
from contract import keys
from contract.config import load_config
from contract.paths import PROJECT_ROOT
from contract.webhooks import (IDEMPOTENCY_HEADER, SIGNATURE_HEADER, Endpoint, WebhookEvent, event as make_event,
                               sign, verify)
from devstack.stack import create_topics, free_port
from jobs.store import RedisStore
from serving.webhooks import Worker
from tests.helpers import child_env, read_topic, wait_until
from traffic.publish import producer
from udfs.features import Event, WindowDelta, feature_names
from udfs.ranking import BatchRanker
from udfs.scorer import ModelWatcher

SECRET = "whsec_test"


class Receiver:
    """A CMS's endpoint: checks each delivery's signature, processes an Idempotency-Key once, and
    answers what `status(n)` says for the n-th request (n from 0)."""

    def __init__(self, port: int, status=lambda n, body: 200) -> None:
        self.port, self.status = port, status
        self.requests: list[tuple[str, bytes, bool]] = []  # (key, body, signature verified)
        self.processed: list[str] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                key = self.headers[IDEMPOTENCY_HEADER]
                ok = verify(SECRET, self.headers[SIGNATURE_HEADER], body)
                with receiver.lock:
                    n = len(receiver.requests)
                    receiver.requests.append((key, body, ok))
                    code = receiver.status(n, body) if ok else 401
                    if code == 200 and key not in receiver.processed:
                        receiver.processed.append(key)
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def events(n: int, kind: str = "segment_entered", salt: str = "") -> list[WebhookEvent]:
    return [make_event(kind, f"u{m}", 1_000 + m, {"segment": "vip"}, f"vip{salt}") for m in range(n)]


def publish(bootstrap: str, topic: str, evs: list[WebhookEvent]) -> None:
    p = producer(bootstrap)
    for e in evs:
        p.send(topic, key=e.user_id.encode(), value=e.encode())
    p.flush()
    p.close()


@pytest.fixture
def hooks(kafka_broker, redis_db, request):
    """Fresh topics and one endpoint at a free port: (cfg, bootstrap, redis, port, set args)."""
    port, r = redis_db
    prefix = f"wh{abs(hash(request.node.name)) % 10**8}."
    create_topics(kafka_broker, 1, {"interactions": f"{prefix}interactions", "webhooks": f"{prefix}events",
                                    "webhooks_dlq": f"{prefix}dlq"})
    sets = {"redis.port": port, "kafka.bootstrap_servers": kafka_broker, "webhooks.topic": f"{prefix}events",
            "webhooks.dlq_topic": f"{prefix}dlq", "webhooks.group_id": f"{prefix}group",
            "webhooks.backoff_base_s": 0.05, "webhooks.backoff_max_s": 0.5}
    cfg = load_config(None, sets)
    receiver_port = free_port()
    r.hset(keys.WEBHOOK_ENDPOINTS, "ep1", Endpoint("ep1", f"http://127.0.0.1:{receiver_port}/hook",
                                                   ("segment_entered", "list_changed"), SECRET).encode())
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    return cfg, kafka_broker, r, receiver_port, args


def test_signed_deliveries_verify_a_tampered_body_fails_and_a_500_is_retried(hooks):
    cfg, bootstrap, r, port, _ = hooks
    sent = events(5) + events(2, kind="profile_updated")  # not subscribed: never sent
    publish(bootstrap, cfg.webhooks.topic, sent)
    p = producer(bootstrap)  # a record that is no event: dead-lettered, not a crash loop
    p.send(cfg.webhooks.topic, value=b"not json")
    p.flush()
    p.close()
    receiver = Receiver(port, status=lambda n, body: 500 if n < 2 else 200).start()
    try:
        counts = Worker(cfg.webhooks, bootstrap, r).run(idle_s=3)
    finally:
        receiver.stop()
    assert counts == {"events": 7, "delivered": 5, "dead_lettered": 1}
    assert receiver.processed == [e.event_id for e in sent[:5]]
    (letter,) = [json.loads(v) for v in read_topic(bootstrap, cfg.webhooks.dlq_topic, idle_ms=1000)]
    assert letter["record"] == "not json" and "not a webhook event" in letter["error"]
    assert len(receiver.requests) == 7 and receiver.requests[0][0] == receiver.requests[2][0]  # the 500s retried
    assert all(ok for _, _, ok in receiver.requests)
    key, body, _ = receiver.requests[-1]
    header = sign(SECRET, int(time.time()), body)
    assert verify(SECRET, header, body) and not verify(SECRET, header, body.replace(b"vip", b"vop"))
    assert not verify("whsec_other", header, body)
    assert WebhookEvent.decode(body).event_id == key


def test_a_receiver_down_for_30_s_loses_nothing(hooks):
    cfg, bootstrap, r, port, _ = hooks
    cfg = cfg.model_copy(update={"webhooks": cfg.webhooks.model_copy(update={"max_attempts": 40,
                                                                             "backoff_max_s": 2.0})})
    sent = events(10)
    publish(bootstrap, cfg.webhooks.topic, sent)
    worker = Worker(cfg.webhooks, bootstrap, r)
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(worker.run(idle_s=5)))
    thread.start()
    time.sleep(30)  # nothing listens on the port meanwhile: every attempt is refused
    receiver = Receiver(port).start()
    try:
        thread.join(120)
    finally:
        receiver.stop()
    assert out == {"events": 10, "delivered": 10, "dead_lettered": 0}
    assert receiver.processed == [e.event_id for e in sent]
    assert read_topic(bootstrap, cfg.webhooks.dlq_topic, idle_ms=1000) == []


def test_no_event_is_processed_twice_across_a_killed_worker_and_a_replayed_job(hooks, tmp_path):
    cfg, bootstrap, r, port, args = hooks
    sent = events(40)
    # the job replayed after a recovery writes the same events again, with the same ids
    publish(bootstrap, cfg.webhooks.topic, sent[:25] + sent[10:25] + sent[25:])
    receiver = Receiver(port, status=lambda n, body: time.sleep(0.05) or 200).start()  # a slowish CMS
    log = open(tmp_path / "worker.log", "wb")
    cmd = [sys.executable, "-m", "cli", "webhooks", "deliver", *args, "--idle-s", "4"]
    try:
        worker = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                                  start_new_session=True)
        assert wait_until(lambda: len(receiver.requests) >= 12, 60), "the worker delivered nothing"
        os.killpg(worker.pid, signal.SIGKILL)  # between a delivery and its commit, most likely
        worker.wait()
        again = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, env=child_env(), timeout=180)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    finally:
        receiver.stop()
        log.close()
    assert sorted(receiver.processed) == sorted(e.event_id for e in sent)  # each processed exactly once
    assert len(receiver.requests) >= len(sent) + 15  # the replayed job's copies were delivered, and ignored


def test_refused_deliveries_are_dead_lettered_and_replay_resends_them(hooks):
    cfg, bootstrap, r, port, args = hooks
    sent = events(6)
    publish(bootstrap, cfg.webhooks.topic, sent)
    refusing = {e.event_id for e in sent[:2]}
    receiver = Receiver(port, status=lambda n, body: 400 if WebhookEvent.decode(body).event_id in refusing
                        else 200).start()
    try:
        assert Worker(cfg.webhooks, bootstrap, r).run(idle_s=3) == {"events": 6, "delivered": 4, "dead_lettered": 2}
        letters = [json.loads(v) for v in read_topic(bootstrap, cfg.webhooks.dlq_topic, idle_ms=1000)]
        assert {x["event"]["event_id"] for x in letters} == refusing
        assert all(x["endpoint_id"] == "ep1" and x["attempts"] == 1 and "HTTP 400" in x["error"] for x in letters)
        # still refused: each letter is tried once and dead-lettered again, and the run ends (it
        # stops at the letters there when it started, not at the ones it writes)
        still = CliRunner().invoke(app, ["webhooks", "replay", *args, "--idle-s", "3"])
        assert still.exit_code == 0, still.output
        assert json.loads(still.stdout.splitlines()[-1]) == {"replayed": 2, "delivered": 0, "failed": 2,
                                                              "skipped": 0}
        assert len(read_topic(bootstrap, cfg.webhooks.dlq_topic, idle_ms=1000)) == 4
        refusing.clear()  # the CMS fixed its side
        out = CliRunner().invoke(app, ["webhooks", "replay", *args, "--idle-s", "3"])
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout.splitlines()[-1]) == {"replayed": 2, "delivered": 2, "failed": 0, "skipped": 0}
        again = CliRunner().invoke(app, ["webhooks", "replay", *args, "--idle-s", "2"])  # replayed once only
        assert json.loads(again.stdout.splitlines()[-1])["replayed"] == 0
    finally:
        receiver.stop()
    assert sorted(receiver.processed) == sorted(e.event_id for e in sent)


def test_the_ranker_writes_segment_list_and_profile_events_the_same_on_a_replay(kafka_broker, redis_db, model_dir):
    port, r = redis_db
    topic = "whjob.events"
    create_topics(kafka_broker, 1, {"interactions": "whjob.interactions", "webhooks": topic})
    cfg = load_config(None, {"redis.port": port, "scoring.model_dir": str(model_dir), "kafka.bootstrap_servers":
                             kafka_broker, "webhooks.enabled": True, "webhooks.topic": topic,
                             "candidates.refresh_s": 0.01,
                             "segments.rules": [{"name": "buyers", "when": "purchases_7d >= 1"}]})
    rng = random.Random(7)
    t0 = int(time.time() * 1000) - 3_600_000
    batches = []
    for step in range(2):
        deltas = []
        for n in range(30):
            kinds = ["view", "view"] + (["purchase"] if step == 1 and n % 2 else [])
            evs = [Event(f"u{n}-{step}-{m}", k, f"i{rng.randrange(30)}", "c1", t0 + step * 60_000 + m, 5.0, True)
                   for m, k in enumerate(kinds)]
            deltas.append(WindowDelta(f"u{n}", t0 + step * 60_000 + 2000, ";".join(e.encode() for e in evs)))
        batches.append(deltas)

    def run_all() -> list[WebhookEvent]:
        ranker = BatchRanker(cfg, ModelWatcher(model_dir, feature_names(cfg.features), 0), RedisStore(cfg, r))
        for deltas in batches:
            ranker.rank(deltas)
            time.sleep(0.02)
        return [WebhookEvent.decode(v) for v in read_topic(kafka_broker, topic, idle_ms=1500)]

    first = run_all()
    entered = [e for e in first if e.type == "segment_entered"]
    assert sorted(e.user_id for e in entered) == sorted(f"u{n}" for n in range(30) if n % 2)  # bought in step 2
    assert all(e.data == {"segment": "buyers"} for e in entered)
    assert {e.type for e in first} == {"segment_entered", "profile_updated", "list_changed"}
    assert len([e for e in first if e.type == "profile_updated"]) == 60  # every user, every final window
    r.flushdb()  # as if Redis lost it all and the job replayed from its checkpoint: the same events again
    second = run_all()[len(first):]
    assert [e.event_id for e in second if e.type != "list_changed"] == \
        [e.event_id for e in first if e.type != "list_changed"]
