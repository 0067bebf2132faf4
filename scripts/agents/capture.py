#!/usr/bin/env python3
"""Record the HTTP requests a coding-agent client sends, to learn their exact shape.

This is a capture tool, not a test mock. It listens on 127.0.0.1:PORT and writes every request
(method, path with query string, headers with authorization / x-api-key values hidden, and the
body parsed as JSON when it is JSON) to DIR/0001-POST-v1_messages.json, 0002-..., in order.

Default mode (no --forward) answers just enough to make a client send its first request and give
up quickly:
  GET  /v1/models (and /models)   -> a one-model list with id --model (OpenAI shape, plus the
                                     Anthropic fields `type`, `display_name`, `has_more`)
  GET  anything else              -> 404 error JSON
  POST /v1/messages*              -> 503 in Anthropic error shape
  POST anything else              -> 503 in OpenAI error shape
(--status changes the 503; clients retry 5xx, so set their retry counts low.)

--forward URL proxies every request to URL (e.g. http://127.0.0.1:8080 for a real kooka) and
records the request and the response (status, headers, body; a streamed response is passed to the
client chunk by chunk as it arrives and recorded whole, SSE bodies as text, after it ends).

Usage:
  python3 scripts/agents/capture.py --port 18080 --dir /tmp/cap --model kooka-test
  python3 scripts/agents/capture.py --port 18080 --dir /tmp/cap --forward http://127.0.0.1:8080
Stdlib only.
"""

import argparse
import http.client
import itertools
import json
import os
import re
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET_HEADERS = {"authorization", "x-api-key", "proxy-authorization", "api-key", "cookie"}
HOP_HEADERS = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length",
}

_counter = itertools.count(1)
_lock = threading.Lock()


def redact(headers):
    out = []
    for k, v in headers.items():
        if k.lower() in SECRET_HEADERS:
            v = "<redacted %d chars>" % len(v)
        out.append([k, v])
    return out


def parse_body(raw, content_type=""):
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kooka-capture/1"

    # quiet default logging; print one line per request instead
    def log_message(self, fmt, *args):
        pass

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                line = self.rfile.readline().strip()
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _record(self, raw, response=None, status=None):
        cfg = self.server.cfg
        with _lock:
            n = next(_counter)
        path_only = urllib.parse.urlsplit(self.path).path
        slug = re.sub(r"[^A-Za-z0-9]+", "_", path_only).strip("_")[:60] or "root"
        name = "%04d-%s-%s.json" % (n, self.command, slug)
        body = parse_body(raw, self.headers.get("Content-Type", ""))
        rec = {
            "seq": n,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()),
            "method": self.command,
            "path": self.path,
            "headers": redact(self.headers),
            "body_bytes": len(raw),
            "body": body,
        }
        if response is not None:
            rec["response"] = response
        with open(os.path.join(cfg.dir, name), "w") as f:
            json.dump(rec, f, indent=2, ensure_ascii=False)
        extra = ""
        if isinstance(body, dict):
            extra = " model=%s stream=%s" % (body.get("model"), body.get("stream"))
        print("%s %s %s %dB%s -> %s" % (name, self.command, self.path, len(raw), extra,
                                       response["status"] if response else status),
              flush=True)

    def _send_json(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status >= 500:
            self.send_header("x-should-retry", "false")  # read by the Anthropic/OpenAI SDKs
        self.end_headers()
        self.wfile.write(data)

    def _handle(self):
        raw = self._read_body()
        cfg = self.server.cfg
        if cfg.forward:
            self._forward(raw)
            return
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        if self.command == "GET" and path in ("/v1/models", "/models"):
            status, obj = 200, {
                "object": "list",
                "data": [{
                    "id": cfg.model, "object": "model", "created": 0, "owned_by": "kooka",
                    "type": "model", "display_name": cfg.model,
                    "created_at": "1970-01-01T00:00:00Z",
                }],
                "has_more": False, "first_id": cfg.model, "last_id": cfg.model,
            }
        elif self.command in ("GET", "HEAD"):
            status, obj = 404, {"error": {"message": "not found: " + path,
                                          "type": "not_found_error", "code": None}}
        elif path.startswith("/v1/messages") or path.startswith("/messages"):
            status, obj = cfg.status, {
                "type": "error",
                "error": {"type": "overloaded_error",
                          "message": "kooka capture: request recorded, not served"},
            }
        else:
            status, obj = cfg.status, {
                "error": {"message": "kooka capture: request recorded, not served",
                          "type": "server_error", "param": None, "code": "unavailable"},
            }
        self._record(raw, status=status)
        self._send_json(status, obj)

    def _forward(self, raw):
        cfg = self.server.cfg
        up = urllib.parse.urlsplit(cfg.forward)
        conn_cls = http.client.HTTPSConnection if up.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(up.hostname, up.port or (443 if up.scheme == "https" else 80),
                        timeout=cfg.forward_timeout)
        base = up.path.rstrip("/")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        headers["Content-Length"] = str(len(raw))
        resp_rec = {"status": None, "headers": [], "body": None}
        try:
            conn.request(self.command, base + self.path, body=raw or None, headers=headers)
            resp = conn.getresponse()
        except OSError as e:
            resp_rec["status"] = 502
            resp_rec["error"] = str(e)
            self._record(raw, resp_rec)
            self._send_json(502, {"error": {"message": "capture forward failed: %s" % e,
                                            "type": "server_error", "code": None}})
            return
        resp_rec["status"] = resp.status
        resp_rec["headers"] = [[k, v] for k, v in resp.getheaders()]
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_HEADERS:
                self.send_header(k, v)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        got = []
        t0 = time.time()
        first = None
        try:
            while True:
                chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(4096)
                if not chunk:
                    break
                if first is None:
                    first = time.time() - t0
                got.append(chunk)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as e:
            resp_rec["client_disconnected"] = str(e)
        finally:
            conn.close()
            self.close_connection = True
        body = b"".join(got)
        resp_rec["body_bytes"] = len(body)
        resp_rec["first_chunk_s"] = first
        resp_rec["total_s"] = round(time.time() - t0, 3)
        resp_rec["body"] = parse_body(body)
        self._record(raw, resp_rec)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # a client that drops its keep-alive connection is normal; keep the log readable
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--dir", required=True, help="folder for the numbered JSON records")
    ap.add_argument("--model", default="kooka-test", help="model id listed by GET /v1/models")
    ap.add_argument("--status", type=int, default=503, help="status for every POST (default 503)")
    ap.add_argument("--forward", metavar="URL", help="proxy to this server and record responses")
    ap.add_argument("--forward-timeout", type=float, default=3600.0)
    cfg = ap.parse_args()
    os.makedirs(cfg.dir, exist_ok=True)
    srv = Server((cfg.host, cfg.port), Handler)
    srv.cfg = cfg
    print("capture: listening on http://%s:%d, recording into %s%s" % (
        cfg.host, srv.server_address[1], cfg.dir,
        (", forwarding to " + cfg.forward) if cfg.forward else ""), flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
