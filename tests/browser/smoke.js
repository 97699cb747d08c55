// The harness itself: Chromium opens a page served by the hub and reads its status.
"use strict";
const { launch, record, run } = require("./lib.js");

run(async () => {
  const browser = await launch();
  const page = await browser.newPage();
  const seen = record(page);
  const resp = await page.goto(process.env.PLEXUS_URL + "/healthz");
  const body = await page.textContent("body");
  await browser.close();
  return { status: resp.status(), body, requests: seen.requests.length };
});
