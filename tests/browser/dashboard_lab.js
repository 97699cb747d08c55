// The Lab view against a hub with the lab on: the form starts a run, the live chart draws from
// the run's progress on `_lab.{run}`, and the results table ends equal to GET /v1/lab/runs/{id}.
"use strict";
const { launch, record, run } = require("./lib.js");

const BASE = process.env.PLEXUS_URL;

run(async () => {
  const browser = await launch();
  const page = await browser.newPage();
  const seen = record(page);
  await page.goto(`${BASE}/#/lab`);
  await page.waitForSelector("#lab-form");
  await page.fill("#lab-patterns", "sse,short-poll");
  await page.fill("#lab-clients", "3");
  await page.fill("#lab-rate", "5");
  await page.fill("#lab-duration", "2s");
  await page.fill("#lab-poll-interval", "250ms");
  await page.click('#lab-form button[type="submit"]');
  await page.waitForFunction(() => /: (done|failed)$/.test(document.querySelector("#lab-status").textContent),
    null, { timeout: 60000 });
  const status = await page.$eval("#lab-status", (e) => e.textContent);
  const runId = status.split(":")[0].replace("run ", "").trim();
  const rows = await page.$$eval("#lab-results tbody tr", (trs) =>
    Object.fromEntries(trs.map((tr) => [tr.dataset.pattern, Number(tr.querySelectorAll("td")[0].textContent)])));
  const chartLines = await page.$$eval("#lab-chart svg polyline, #lab-chart svg path", (ls) => ls.length);
  const api = await (await fetch(`${BASE}/v1/lab/runs/${runId}`)).json();
  await browser.close();
  return {
    status, rows, chartLines, api,
    consoleErrors: seen.consoleErrors.concat(seen.pageErrors),
  };
});
