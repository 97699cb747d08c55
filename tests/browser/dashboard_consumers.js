// The Consumers view: a consumer's pending count, and a webhook's state, lag and last attempt
// (its receiver cannot be resolved, so attempts fail), refreshed live.
"use strict";
const { launch, record, run } = require("./lib.js");

const BASE = process.env.PLEXUS_URL;
const HOOK = process.env.WEBHOOK;

run(async () => {
  const browser = await launch();
  const page = await browser.newPage();
  const seen = record(page);
  await page.goto(`${BASE}/#/consumers`);
  await page.waitForSelector('#consumers tr[data-consumer="dash-c"]');
  const pending = await page.$eval('#consumers tr[data-consumer="dash-c"] .pending', (e) => Number(e.textContent));
  const row = `#webhooks tr[data-webhook="${HOOK}"]`;
  await page.waitForSelector(row);
  // The first attempt shows within a refresh or two.
  await page.waitForFunction((sel) => {
    const a = document.querySelector(`${sel} .attempt`);
    return a && a.textContent !== "none yet";
  }, row, { timeout: 20000 });
  const hook = await page.$eval(row, (tr) => ({
    state: tr.querySelector(".state").textContent,
    pending: Number(tr.querySelector(".pending").textContent),
    attempt: tr.querySelector(".attempt").textContent,
  }));
  await browser.close();
  return { pending, hook, consoleErrors: seen.consoleErrors.concat(seen.pageErrors) };
});
