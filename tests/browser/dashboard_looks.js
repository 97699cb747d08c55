// Light and dark, at 1280 and 375 px: screenshots into $SHOTS, the contrast of the main text
// computed from the page's own colours (WCAG 2 relative luminance), no sideways scrolling at
// 375 px, and the theme toggle kept across a reload.
"use strict";
const path = require("path");
const { launch, record, run } = require("./lib.js");

const BASE = process.env.PLEXUS_URL;
const SHOTS = process.env.SHOTS;
const TOPIC = process.env.TOPIC;

// Runs in the page: the contrast ratio of each main text against the background it sits on.
function contrasts() {
  const rgb = (s) => (s.match(/[\d.]+/g) || []).slice(0, 4).map(Number);
  const lum = ([r, g, b]) => {
    const c = [r, g, b].map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  };
  // The first opaque background from the element up.
  const bg = (e) => {
    for (; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || c[3] > 0) return c;
    }
    return [255, 255, 255];
  };
  const ratio = (e) => {
    const a = lum(rgb(getComputedStyle(e).color));
    const b = lum(bg(e));
    return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  };
  const out = {};
  for (const sel of ["body", "h2", "#tail code", "#tail time", "#topic-info", "header a", "nav a", "button", "label, input"]) {
    const e = document.querySelector(sel);
    if (e) out[sel] = Math.round(ratio(e) * 100) / 100;
  }
  out.backgroundLuminance = Math.round(lum(bg(document.body)) * 1000) / 1000;
  return out;
}

run(async () => {
  const browser = await launch();
  const out = { contrast: {}, overflow: {}, shots: [], consoleErrors: [] };
  for (const scheme of ["light", "dark"]) {
    for (const width of [1280, 375]) {
      const context = await browser.newContext({ colorScheme: scheme, viewport: { width, height: width > 600 ? 800 : 740 } });
      const page = await context.newPage();
      const seen = record(page);
      await page.goto(`${BASE}/#/topic/${TOPIC}`);
      await page.waitForSelector("#tail li[data-seq]");
      await page.waitForSelector("#pub-form");
      const key = `${scheme}-${width}`;
      out.contrast[key] = await page.evaluate(contrasts);
      out.overflow[key] = await page.evaluate(() => document.documentElement.scrollWidth - innerWidth);
      const file = path.join(SHOTS, `dashboard-${key}.png`);
      await page.screenshot({ path: file });
      out.shots.push(file);
      if (width === 1280) {
        await page.goto(`${BASE}/#/topics`);
        await page.waitForSelector("#topics tbody tr");
        // A few bursts, so the rate sparkline has a shape.
        for (const n of [6, 14, 9]) {
          for (let i = 0; i < n; i++) await fetch(`${BASE}/v1/topics/${TOPIC}/messages`, { method: "POST", body: `{"burst":${i}}` });
          await new Promise((r) => setTimeout(r, 2100));
        }
        await page.waitForSelector(".spark polyline", { state: "attached" });
        const overview = path.join(SHOTS, `dashboard-topics-${scheme}.png`);
        await page.screenshot({ path: overview });
        out.shots.push(overview);
      }
      out.consoleErrors.push(...seen.consoleErrors, ...seen.pageErrors);
      await context.close();
    }
  }
  // The toggle: from the system's light to dark, kept across a reload.
  const context = await browser.newContext({ colorScheme: "light" });
  const page = await context.newPage();
  await page.goto(BASE + "/");
  const before = await page.evaluate(() => document.documentElement.dataset.theme);
  await page.click("#theme");
  await page.reload();
  await page.waitForSelector("#topics");
  const after = await page.evaluate(() => document.documentElement.dataset.theme);
  const dark = await page.evaluate(contrasts);
  out.toggle = { before, after, backgroundLuminance: dark.backgroundLuminance };
  await browser.close();
  return out;
});
