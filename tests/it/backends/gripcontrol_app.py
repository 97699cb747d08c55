"""A GRIP backend written with the PyPI `gripcontrol` library, unchanged in spirit from its
README, run by tests/it/grip.rs behind `plexus sidecar --app`. Usage: PORT KEY."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gripcontrol import GripPubControl, create_grip_channel_header, validate_sig

PORT, KEY = int(sys.argv[1]), sys.argv[2]


class App(BaseHTTPRequestHandler):
    def answer(self, status, headers, body):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if not validate_sig(self.headers.get("Grip-Sig", ""), KEY):
            return self.answer(403, [], b"not signed by the proxy\n")
        channel = create_grip_channel_header("gc")
        if self.path.startswith("/stream"):
            headers = [("Content-Type", "text/plain"), ("Grip-Hold", "stream"),
                       ("Grip-Channel", channel)]
            return self.answer(200, headers, b"start\n")
        headers = [("Content-Type", "text/plain"), ("Grip-Hold", "response"),
                   ("Grip-Channel", channel), ("Grip-Timeout", "5")]
        return self.answer(200, headers, b"timeout\n")

    def do_POST(self):
        ask = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        pub = GripPubControl({"control_uri": ask["control"]})
        if ask["kind"] == "stream":
            pub.publish_http_stream("gc", ask["data"], blocking=True)
        else:
            pub.publish_http_response("gc", ask["data"], blocking=True)
        self.answer(204, [], b"")

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), App).serve_forever()
