// An idle dashboard (the topics view open, nothing published) for 60 s: the requests the page
// makes, and the CPU time the hub (process $HUB_PID) spends meanwhile, from /proc.
"use strict";
const fs = require("fs");
const { execSync } = require("child_process");
const { launch, record, run } = require("./lib.js");

const BASE = process.env.PLEXUS_URL;
const WINDOW_S = 60;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function cpuTicks(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]); // utime + stime
}

run(async () => {
  const hz = Number(execSync("getconf CLK_TCK").toString().trim()) || 100;
  const pid = process.env.HUB_PID;
  const browser = await launch();
  const page = await browser.newPage();
  const seen = record(page);
  await page.goto(BASE + "/");
  await page.waitForSelector("#topics tbody tr");
  await sleep(1000);
  const requestsBefore = seen.requests.length;
  const ticksBefore = cpuTicks(pid);
  const t0 = Date.now();
  await sleep(WINDOW_S * 1000);
  const seconds = (Date.now() - t0) / 1000;
  const cpuSeconds = (cpuTicks(pid) - ticksBefore) / hz;
  const requests = seen.requests.length - requestsBefore;
  await browser.close();
  return {
    seconds, requests, requestsPerSecond: requests / seconds,
    cpuSeconds, cpuShare: cpuSeconds / seconds,
    consoleErrors: seen.consoleErrors.concat(seen.pageErrors),
  };
});
