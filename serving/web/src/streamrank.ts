// streamrank's web SDK: a page's placements in one call through the gateway (GET /v1/page), with a
// timeout and a fallback render, and exposures and clicks reported with their answer's request_id
// (POST /v1/beacon, by navigator.sendBeacon so a click that leaves the page is still sent).

export interface Placement {
  name: string;
  /** items wanted; 0 or absent: the service's default */
  k?: number;
}

export interface Item {
  item_id: string;
  score: number;
  category: string;
  /** why it is shown: bought_before, viewed_recently, trending_in:<category>, model:<code>, pinned, boosted */
  reasons: string[];
}

export interface PlacementAnswer {
  placement: string;
  items: Item[];
  /** the answer's id; "" for a fallback the page rendered itself (nothing to attribute) */
  request_id: string;
  fallback: boolean;
  fallback_reason: string;
  segments: string[];
}

export interface Page {
  user_id: string;
  segments: string[];
  placements: Record<string, PlacementAnswer>;
  /** why the SDK rendered its own fallback ("" when the gateway answered) */
  local_fallback: string;
}

export interface Options {
  /** the gateway's base URL ("" for the page's own origin) */
  baseUrl?: string;
  /** the gateway's bearer token, when it requires one (beacons then go by fetch with keepalive) */
  token?: string;
  /** how long to wait for the gateway before rendering the fallback (ms) */
  timeoutMs?: number;
  /** items to show per placement when the gateway does not answer in time */
  fallback?: Record<string, Item[]>;
  fetch?: typeof fetch;
  sendBeacon?: (url: string, data: string) => boolean;
}

export class Streamrank {
  private readonly base: string;
  private readonly timeoutMs: number;
  private readonly fetchImpl: typeof fetch;
  private readonly beacon?: (url: string, data: string) => boolean;

  constructor(private readonly options: Options = {}) {
    this.base = (options.baseUrl ?? "").replace(/\/$/, "");
    this.timeoutMs = options.timeoutMs ?? 800;
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    const nav = (globalThis as { navigator?: Navigator }).navigator;
    this.beacon = options.sendBeacon ?? (nav?.sendBeacon ? (u, d) => nav.sendBeacon(u, d) : undefined);
  }

  private headers(): Record<string, string> {
    return this.options.token ? { Authorization: `Bearer ${this.options.token}` } : {};
  }

  /** Every placement of a page in one call; the fallback (never an exception) when the gateway
   * fails or is slower than timeoutMs. */
  async page(userId: string, placements: Placement[]): Promise<Page> {
    const query = placements.map((p) => `p=${encodeURIComponent(p.name)}:${p.k ?? 0}`).join("&");
    const url = `${this.base}/v1/page/${encodeURIComponent(userId)}?${query}`;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.timeoutMs);
    try {
      const resp = await this.fetchImpl(url, { headers: this.headers(), signal: abort.signal });
      if (!resp.ok) {
        return this.fallback(userId, placements, `gateway answered ${resp.status}`);
      }
      const body = await resp.json();
      // The body may be the browser's cached copy (revalidated by a 304): this call's own request
      // ids, the ones its clicks must carry, are in X-Request-Id, in placement order.
      const ids = (resp.headers?.get("X-Request-Id") ?? "").split(",").map((id) => id.trim());
      const out: Record<string, PlacementAnswer> = {};
      (body.placements as PlacementAnswer[]).forEach((a, i) => {
        out[a.placement] = ids[i] ? { ...a, request_id: ids[i] } : a;
      });
      return { user_id: userId, segments: body.segments ?? [], placements: out, local_fallback: "" };
    } catch (err) {
      const why = abort.signal.aborted ? `no answer within ${this.timeoutMs} ms` : `gateway unreachable (${err})`;
      return this.fallback(userId, placements, why);
    } finally {
      clearTimeout(timer);
    }
  }

  private fallback(userId: string, placements: Placement[], why: string): Page {
    const out: Record<string, PlacementAnswer> = {};
    for (const p of placements) {
      const items = (this.options.fallback?.[p.name] ?? []).slice(0, p.k || undefined);
      out[p.name] = { placement: p.name, items, request_id: "", fallback: true, fallback_reason: "client_fallback",
        segments: [] };
    }
    return { user_id: userId, segments: [], placements: out, local_fallback: why };
  }

  /** The page rendered this answer (sent once per answer; a local fallback has nothing to report). */
  exposure(userId: string, answer: PlacementAnswer): boolean {
    if (!answer.request_id) return false;
    return this.send({ type: "exposure", user_id: userId, request_id: answer.request_id,
      placement: answer.placement, items: answer.items.map((i) => i.item_id) });
  }

  /** The user clicked one of the answer's items: an interaction the job and the experiments
   * attribute to the answer by its request_id. */
  click(userId: string, answer: PlacementAnswer, item: Item): boolean {
    if (!answer.request_id) return false;
    return this.send({ type: "click", user_id: userId, request_id: answer.request_id, item_id: item.item_id,
      category: item.category, placement: answer.placement });
  }

  private send(event: Record<string, unknown>): boolean {
    const url = `${this.base}/v1/beacon`;
    const data = JSON.stringify({ events: [event] });
    if (!this.options.token && this.beacon) {
      return this.beacon(url, data);
    }
    // sendBeacon cannot carry a token: fetch with keepalive outlives the page the same way
    void this.fetchImpl(url, { method: "POST", body: data, keepalive: true,
      headers: { ...this.headers(), "Content-Type": "application/json" } }).catch(() => undefined);
    return true;
  }
}

/** Renders one answer as a list, each item with its reasons; clicking an item calls onClick. */
export function render(container: HTMLElement, answer: PlacementAnswer, onClick: (item: Item) => void): void {
  const doc = container.ownerDocument;
  container.replaceChildren();
  container.dataset.requestId = answer.request_id;
  container.dataset.fallback = String(answer.fallback);
  const list = doc.createElement("ol");
  for (const item of answer.items) {
    const li = doc.createElement("li");
    li.className = "sr-item";
    li.dataset.itemId = item.item_id;
    const name = doc.createElement("a");
    name.href = "#";
    name.textContent = `${item.item_id} (${item.category})`;
    name.addEventListener("click", (ev) => {
      ev.preventDefault();
      onClick(item);
    });
    li.append(name);
    for (const reason of item.reasons) {
      const tag = doc.createElement("span");
      tag.className = "sr-reason";
      tag.textContent = reason;
      li.append(" ", tag);
    }
    list.append(li);
  }
  container.append(list);
}
