"""Traces across the two services: a caller's W3C traceparent -> the gateway's SERVER span -> its
CLIENT span to lookupd -> lookupd's SERVER span, all in one trace, each the parent of the next.
Received by a small local OTLP/HTTP receiver that reads both of OTLP's encodings: protobuf (what
Go's otlptracehttp sends) and JSON (what the gateway sends)."""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from contract.serving_config import load_serving_config
from devstack.stack import free_port
from serving.launch import start_server
from tests.helpers import wait_until
from tests.redis.test_editorial import seed
from tests.redis.test_serving_ops import running_gateway

KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def wire_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """A protobuf message's (field number, value) pairs: ints for varints, bytes otherwise."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        out.append((number, value))
    return out


def spans_of_protobuf(body: bytes) -> list[dict]:
    """ExportTraceServiceRequest{1: ResourceSpans{1: Resource{1: KeyValue{1: key, 2: AnyValue{1:
    string}}}, 2: ScopeSpans{2: Span{1: trace_id, 2: span_id, 4: parent_span_id, 5: name, 6: kind}}}}"""
    out = []
    for _, resource_spans in (f for f in wire_fields(body) if f[0] == 1):
        fields = wire_fields(resource_spans)
        service = ""
        for _, resource in (f for f in fields if f[0] == 1):
            for _, kv in (f for f in wire_fields(resource) if f[0] == 1):
                d = dict(wire_fields(kv))
                if d.get(1) == b"service.name":
                    service = dict(wire_fields(d[2])).get(1, b"").decode()
        for _, scope_spans in (f for f in fields if f[0] == 2):
            for _, span in (f for f in wire_fields(scope_spans) if f[0] == 2):
                s = dict(wire_fields(span))
                out.append({"service": service, "trace_id": s[1].hex(), "span_id": s[2].hex(),
                            "parent": s.get(4, b"").hex(), "name": s[5].decode(), "kind": KINDS[s.get(6, 1)]})
    return out


def spans_of_json(body: bytes) -> list[dict]:
    out = []
    for rs in json.loads(body)["resourceSpans"]:
        attrs = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
        service = attrs.get("service.name", {}).get("stringValue", "")
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                out.append({"service": service, "trace_id": s["traceId"], "span_id": s["spanId"],
                            "parent": s.get("parentSpanId", ""), "name": s["name"], "kind": KINDS[s["kind"]]})
    return out


@contextlib.contextmanager
def otlp_receiver():
    """POST /v1/traces in either encoding; yields (base URL, the spans received so far)."""
    spans: list[dict] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            kind = self.headers.get("Content-Type", "")
            got = spans_of_json(body) if kind.startswith("application/json") else spans_of_protobuf(body)
            with lock:
                spans.extend(got)
            self.send_response(200)
            self.send_header("Content-Type", kind or "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", spans
    finally:
        server.shutdown()


def test_a_callers_trace_runs_through_the_gateway_into_lookupd(redis_db):
    port, r = redis_db
    seed(r)
    with otlp_receiver() as (endpoint, spans), contextlib.ExitStack() as stack:
        cfg = load_serving_config(None, {"redis.port": port, "engine": "go", "tracing.otlp_endpoint": endpoint})
        lookupd = stack.enter_context(start_server(cfg))
        base = stack.enter_context(running_gateway(cfg.model_copy(update={"gateway": cfg.gateway.model_copy(
            update={"lookupd": f"127.0.0.1:{lookupd.port}"})})))
        trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
        got = httpx.get(f"{base}/v1/recommendations/vip-user", params={"k": 3},
                        headers={"traceparent": f"00-{trace_id}-{caller_span}-01"})
        assert got.status_code == 200 and len(got.json()["items"]) == 3
        untraced = httpx.get(f"{base}/v1/recommendations/plain-user")  # no traceparent: a trace of its own
        assert untraced.status_code == 200

        def mine() -> list[dict]:
            return [s for s in list(spans) if s["trace_id"] == trace_id]
        assert wait_until(lambda: {s["service"] for s in mine()} == {"streamrank-gateway", "streamrank-lookupd"}, 20), \
            spans
        by_kind = {(s["service"], s["kind"]): s for s in mine()}
        server = by_kind[("streamrank-gateway", "SERVER")]
        client = by_kind[("streamrank-gateway", "CLIENT")]
        looked_up = by_kind[("streamrank-lookupd", "SERVER")]
        assert server["parent"] == caller_span and server["name"] == "GET /v1/recommendations/{user_id}"
        assert client["parent"] == server["span_id"]
        assert client["name"] == looked_up["name"] == "streamrank.v1.Recommendations/GetRecommendations"
        assert looked_up["parent"] == client["span_id"]
        assert all("vip-user" not in s["name"] for s in spans)  # span names hold routes, not user ids
        # the call without a traceparent started its own trace at the gateway, and lookupd continued it
        def own_trace() -> bool:
            got = [s for s in list(spans) if s["trace_id"] != trace_id]
            roots = {s["span_id"] for s in got if s["service"] == "streamrank-gateway" and s["kind"] == "SERVER"
                     and not s["parent"]}
            clients = {s["span_id"] for s in got if s["kind"] == "CLIENT" and s["parent"] in roots}
            return any(s["service"] == "streamrank-lookupd" and s["parent"] in clients for s in got)
        assert wait_until(own_trace, 20), spans
        assert httpx.get(f"{base}/healthz").status_code == 200
        time.sleep(1.5)  # a batch's delay: a health check's span would have been sent by now
        assert not any(s["name"].endswith("/healthz") or "Health" in s["name"] for s in list(spans)), \
            [s["name"] for s in spans]
