// A GRIP backend written with the npm `@fanoutio/serve-grip` library as its README shows it,
// run by tests/it/grip.rs behind `plexus sidecar --app` (and behind Pushpin). Usage: PORT KEY
// CONTROL. It requires a GRIP proxy whose `Grip-Sig` verifies under KEY with issuer `plexus`
// (anything else gets serve-grip's own 501), and publishes through CONTROL's `/publish/`.
import http from "node:http";
import { HttpStreamFormat } from "@fanoutio/grip";
import { ServeGrip } from "@fanoutio/serve-grip";

const [port, key, control] = process.argv.slice(-3);
const serveGrip = new ServeGrip({
  grip: { control_uri: control, verify_iss: "plexus", verify_key: key },
  gripProxyRequired: true,
});

// GRIP requests answered so far (a proxy may ask again: Pushpin re-asks after a subscription).
let holds = 0;

http
  .createServer(async (req, res) => {
    if (req.url === "/holds") return res.end(String(holds));
    if (req.method === "POST" && req.url === "/pub") {
      let body = "";
      for await (const chunk of req) body += chunk;
      const ask = JSON.parse(body);
      const publisher = serveGrip.getPublisher();
      if (ask.kind === "stream") await publisher.publishHttpStream("sg", ask.data);
      else if (ask.kind === "close") await publisher.publishHttpStream("sg", new HttpStreamFormat(null, true));
      else await publisher.publishHttpResponse("sg", ask.data);
      res.statusCode = 204;
      return res.end();
    }
    if (!(await serveGrip.run(req, res))) return;
    if (req.url === "/hello") {
      res.setHeader("X-App", "1");
      return res.end("hello\n");
    }
    holds += 1;
    const instruct = res.grip.startInstruct();
    instruct.addChannel("sg");
    res.setHeader("Content-Type", "text/plain");
    if (req.url.startsWith("/stream") || req.url.startsWith("/feed")) {
      // `/feed` is `/stream` without keep-alives, for a byte-for-byte comparison.
      instruct.setHoldStream();
      if (req.url.startsWith("/stream")) instruct.setKeepAlive("ka\n", 2);
      return res.end("start\n");
    }
    instruct.setHoldLongPoll(5);
    res.end("timeout\n");
  })
  .listen(Number(port), "127.0.0.1");
