// The Jobs view: counts by state per queue, the dead job with its error, and its retry; then
// the Lab view against a hub without the lab (404): "lab disabled".
"use strict";
const { launch, record, run } = require("./lib.js");

const BASE = process.env.PLEXUS_URL;
const QUEUE = process.env.QUEUE;
const DEAD = process.env.DEAD_JOB;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function counts(page) {
  return page.$$eval(`#job-counts tr[data-queue="${QUEUE}"] td`, (tds) =>
    Object.fromEntries(tds.map((td) => [td.className.split(" ")[1], Number(td.textContent)])));
}

run(async () => {
  const browser = await launch();
  const page = await browser.newPage();
  const seen = record(page);
  await page.goto(`${BASE}/#/jobs`);
  await page.waitForSelector(`#job-counts tr[data-queue="${QUEUE}"]`);
  const before = await counts(page);
  const deadRow = await page.$(`#dead-jobs tr[data-job="${DEAD}"]`);
  const deadError = deadRow ? await deadRow.$eval(".error-text", (e) => e.textContent) : null;
  await page.click(`#dead-jobs tr[data-job="${DEAD}"] button.retry`);
  await page.waitForSelector(`#dead-jobs tr[data-job="${DEAD}"]`, { state: "detached", timeout: 10000 });
  const after = await counts(page);
  const apiAfter = await (await fetch(`${BASE}/v1/jobs/${DEAD}`)).json();

  await page.goto(`${BASE}/#/lab`);
  await page.waitForSelector("#lab-form");
  await page.click('#lab-form button[type="submit"]');
  await page.waitForFunction(() => document.querySelector("#lab-status").textContent !== "");
  const lab = await page.$eval("#lab-status", (e) => e.textContent);
  await browser.close();
  return {
    before, after, deadError, apiStateAfter: apiAfter.state, lab,
    // The lab's 404 is the expected answer of a hub without it.
    consoleErrors: seen.consoleErrors.filter((e) => !e.includes("404")).concat(seen.pageErrors),
  };
});
