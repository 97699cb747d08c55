// `auth.mode = required`: no data before login; the token is sent in headers only (no
// access_token in any URL, WebSockets included); the publish form is shown only to a token that
// may publish, and a forged publish with a reader's token is refused (403); delete only for an
// admin. The tail runs over the WebSocket, which authenticates by its first frame.
"use strict";
const { launch, record, run } = require("./lib.js");

const BASE = process.env.PLEXUS_URL;
const TOPIC = "dash.auth";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

run(async () => {
  const browser = await launch();
  const urls = [];
  const consoleErrors = [];
  const apiBeforeLogin = [];

  async function signIn(token) {
    const context = await browser.newContext();
    const page = await context.newPage();
    const seen = record(page);
    page.on("request", (r) => urls.push(r.url()));
    page.on("websocket", (ws) => urls.push(ws.url()));
    page.on("response", (r) => {
      if (r.url().includes("/v1/") && !page.__signedIn) apiBeforeLogin.push(r.status());
    });
    await page.goto(BASE + "/");
    await page.waitForSelector("#login:not([hidden])");
    const dataBeforeLogin = (await page.$("#topics")) !== null;
    page.__signedIn = true;
    await page.fill("#token", token);
    await page.click('#login-form button[type="submit"]');
    await page.waitForSelector("#topics");
    return { context, page, seen, dataBeforeLogin };
  }

  async function topicPage(page) {
    await page.goto(`${BASE}/#/topic/${TOPIC}`);
    await page.waitForSelector("#tail-state[data-state]");
    await sleep(300);
    return {
      form: (await page.$("#pub-form")) !== null,
      del: (await page.$("#delete")) !== null,
    };
  }

  // The publisher: may publish, no admin.
  const pub = await signIn(process.env.TOKEN_PUBLISHER);
  const pubRights = await topicPage(pub.page);
  await pub.page.selectOption("#transport", "ws");
  await pub.page.waitForSelector('#tail li[data-seq="1"]');
  await pub.page.fill("#pub-data", "from the form");
  await pub.page.fill("#pub-event", "created");
  await pub.page.click('#pub-form button[type="submit"]');
  await pub.page.waitForSelector("#pub-result[data-seq]");
  const publishedSeq = Number(await pub.page.$eval("#pub-result", (e) => e.dataset.seq));
  // The form's message comes back over the WebSocket tail.
  await pub.page.waitForSelector(`#tail li[data-seq="${publishedSeq}"]`);
  consoleErrors.push(...pub.seen.consoleErrors, ...pub.seen.pageErrors);

  // The reader: no form, no delete, and a forged publish is refused.
  const reader = await signIn(process.env.TOKEN_READER);
  const readerRights = await topicPage(reader.page);
  const forged = await reader.page.evaluate(async (topic) => {
    const r = await fetch(`/v1/topics/${topic}/messages`, {
      method: "POST", body: "forged",
      headers: { Authorization: "Bearer " + sessionStorage.getItem("plexus.token") },
    });
    return r.status;
  }, TOPIC);
  consoleErrors.push(...reader.seen.consoleErrors.filter((e) => !e.includes("403")), ...reader.seen.pageErrors);

  // The form's message, read back through the API (and nothing forged after it).
  const readBack = await (await fetch(`${BASE}/v1/topics/${TOPIC}/messages?since=${publishedSeq - 1}`, {
    headers: { Authorization: "Bearer " + process.env.TOKEN_ADMIN },
  })).json();

  // The admin: delete is offered.
  const admin = await signIn(process.env.TOKEN_ADMIN);
  const adminRights = await topicPage(admin.page);
  // Delete takes two clicks: the first only arms it.
  await admin.page.click("#delete");
  const armed = await admin.page.$eval("#delete", (e) => e.textContent);
  await admin.page.click("#delete");
  await admin.page.waitForFunction(() => document.querySelector("#topic-info").textContent.includes("deleted"));
  consoleErrors.push(...admin.seen.consoleErrors, ...admin.seen.pageErrors);

  await browser.close();
  return {
    dataBeforeLogin: pub.dataBeforeLogin || reader.dataBeforeLogin || admin.dataBeforeLogin,
    apiBeforeLogin,
    pubRights, readerRights, adminRights, publishedSeq, forged, armed, readBack,
    tokenInUrl: urls.filter((u) => u.includes("access_token")),
    urls: urls.length,
    consoleErrors: consoleErrors.filter((e) => !e.includes("401")),
  };
});
