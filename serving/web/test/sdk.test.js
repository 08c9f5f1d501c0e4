// The SDK against a scripted fetch (no browser, no gateway): the browser test
// (tests/integration/test_web_sdk.py) drives it in Chromium against the real gateway.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Streamrank } from "../dist/streamrank.js";

const answer = (placement, ids) => ({ placement, request_id: "a".repeat(32), fallback: false, fallback_reason: "",
  segments: ["vip"], items: ids.map((id) => ({ item_id: id, score: 1, category: "c1", reasons: ["pinned"] })) });

test("one call fetches every placement, keyed by name", async () => {
  const urls = [];
  const fetch = async (url) => {
    urls.push(url);
    return { ok: true, json: async () => ({ user_id: "u 1", segments: ["vip"],
      placements: [answer("hero", ["i1"]), answer("rail", ["i2", "i3"])] }) };
  };
  const page = await new Streamrank({ baseUrl: "http://gw/", fetch }).page("u 1", [{ name: "hero", k: 1 }, { name: "rail" }]);
  assert.deepEqual(urls, ["http://gw/v1/page/u%201?p=hero:1&p=rail:0"]);
  assert.deepEqual(Object.keys(page.placements), ["hero", "rail"]);
  assert.deepEqual(page.segments, ["vip"]);
  assert.equal(page.local_fallback, "");
});

test("each placement carries this call's request id from X-Request-Id, not a cached body's", async () => {
  const fetch = async () => ({ ok: true, headers: new Headers({ "X-Request-Id": "r-hero, r-rail" }),
    json: async () => ({ user_id: "u1", segments: [], placements: [answer("hero", ["i1"]), answer("rail", ["i2"])] }) });
  const page = await new Streamrank({ fetch }).page("u1", [{ name: "hero" }, { name: "rail" }]);
  assert.equal(page.placements.hero.request_id, "r-hero");
  assert.equal(page.placements.rail.request_id, "r-rail");
});

test("a gateway slower than the timeout gets the fallback render, not an exception", async () => {
  const fetch = (url, { signal }) => new Promise((_, reject) => signal.addEventListener("abort", () => reject(new Error("aborted"))));
  const fallback = { hero: [{ item_id: "house", score: 0, category: "x", reasons: [] }] };
  const page = await new Streamrank({ fetch, timeoutMs: 20, fallback }).page("u1", [{ name: "hero", k: 2 }, { name: "rail" }]);
  assert.equal(page.local_fallback, "no answer within 20 ms");
  assert.deepEqual(page.placements.hero.items.map((i) => i.item_id), ["house"]);
  assert.deepEqual(page.placements.rail.items, []);
  assert.ok(page.placements.hero.fallback && page.placements.hero.request_id === "");
});

test("an error status gets the fallback too", async () => {
  const page = await new Streamrank({ fetch: async () => ({ ok: false, status: 503 }) }).page("u1", [{ name: "hero" }]);
  assert.equal(page.local_fallback, "gateway answered 503");
});

test("a click is beaconed with the answer's request_id; a local fallback reports nothing", () => {
  const sent = [];
  const sdk = new Streamrank({ sendBeacon: (url, data) => { sent.push([url, JSON.parse(data)]); return true; } });
  const a = answer("hero", ["i1"]);
  assert.ok(sdk.click("u1", a, a.items[0]));
  assert.ok(sdk.exposure("u1", a));
  assert.deepEqual(sent[0], ["/v1/beacon", { events: [{ type: "click", user_id: "u1", request_id: a.request_id,
    item_id: "i1", category: "c1", placement: "hero" }] }]);
  assert.equal(sent[1][1].events[0].type, "exposure");
  assert.equal(sdk.click("u1", { ...a, request_id: "" }, a.items[0]), false);
  assert.equal(sent.length, 2);
});
