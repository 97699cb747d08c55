// The chart `plexus lab --svg` writes: Chromium opens the file alone (it must need nothing
// else), lists its legend labels, and a screenshot of it is checked non-empty by counting the
// pixels that are not white (the screenshot is decoded by Chromium too, on a canvas).
"use strict";
const fs = require("fs");
const { launch, run } = require("./lib.js");

run(async () => {
  const svgPath = process.env.LAB_SVG;
  const shot = process.env.LAB_SHOT;
  const browser = await launch();
  const page = await browser.newPage({ viewport: { width: 800, height: 800 } });
  const failed = [];
  page.on("requestfailed", (r) => failed.push(r.url()));
  await page.goto("file://" + svgPath);
  const legend = await page.$$eval("g.legend text", (ts) => ts.map((t) => t.textContent));
  const bars = await page.$$eval("rect.bar", (rs) => rs.length);
  const png = await page.screenshot({ path: shot });
  // Decode the PNG in a blank page and count non-white pixels.
  const blank = await browser.newPage();
  const counts = await blank.evaluate(async (b64) => {
    const img = new Image();
    img.src = "data:image/png;base64," + b64;
    await img.decode();
    const c = document.createElement("canvas");
    c.width = img.width;
    c.height = img.height;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let ink = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i] < 240 || d[i + 1] < 240 || d[i + 2] < 240) ink++;
    }
    return { width: c.width, height: c.height, ink, total: d.length / 4 };
  }, png.toString("base64"));
  await browser.close();
  return { legend, bars, failed, shotBytes: fs.statSync(shot).size, ...counts };
});
