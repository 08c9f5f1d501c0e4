// Drives the gateway's /demo page in Debian's Chromium (puppeteer-core, no downloaded browser):
//   node browser/drive-demo.mjs GATEWAY_URL USER CHROMIUM SCREENSHOT
// prints one JSON line: what the page shows per placement (items, their reasons, request ids),
// its segments, and the result of clicking the first hero item.
import puppeteer from "puppeteer-core";

const [base, user, executablePath, screenshot] = process.argv.slice(2);
const browser = await puppeteer.launch({ executablePath, headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const beacons = [];
  page.on("request", (r) => { if (r.url().endsWith("/v1/beacon")) beacons.push(JSON.parse(r.postData() || "{}")); });
  await page.goto(`${base}/demo?user=${encodeURIComponent(user)}`, { waitUntil: "networkidle0" });
  await page.waitForSelector("body[data-ready=true]", { timeout: 15000 });
  const shown = await page.evaluate(() => {
    const out = {};
    for (const id of ["hero", "rail"]) {
      const el = document.getElementById(id);
      out[id] = { request_id: el.dataset.requestId, fallback: el.dataset.fallback === "true",
        items: [...el.querySelectorAll(".sr-item")].map((li) => ({ item_id: li.dataset.itemId,
          reasons: [...li.querySelectorAll(".sr-reason")].map((r) => r.textContent) })) };
    }
    return { placements: out, segments: [...document.querySelectorAll("#segments span")].map((s) => s.textContent),
      status: document.getElementById("status").textContent };
  });
  await page.click("#hero .sr-item a");
  await page.waitForFunction(() => window.clicks.length === 1);
  await new Promise((r) => setTimeout(r, 300)); // the beacon leaves
  shown.clicks = await page.evaluate(() => window.clicks);
  shown.beacons = beacons;
  shown.errors = errors;
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify(shown));
} finally {
  await browser.close();
}
