"""A callback receiver in its own process on a real loopback port, and the tests' handle on it.

Every request (except to /_control) is appended to a JSON-lines log: method, path, query,
headers, body, arrival time. POST /_control with JSON {"status": 500, "delay_s": 2,
"delay_path": "/slow", "reply": "ACK/Jasmin"} changes how it answers from then on. Run:

    python -m tests.peers.callback_server --port 18080 --log requests.jsonl
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.peers.processes import ServiceProcess, free_port, start_service

CONTROL_PATH = "/_control"


class Behaviour:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status = 200
        self.delay_s = 0.0
        # the delay holds only the requests to this path ("": every request)
        self.delay_path = ""
        self.reply = "ok"


def serve(port: int, log_path: Path) -> None:
    behaviour = Behaviour()
    log = log_path.open("a", encoding="utf-8")
    log_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.handle_any()

        def do_POST(self) -> None:
            self.handle_any()

        def handle_any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            if parts.path == CONTROL_PATH:
                changes = json.loads(body)
                with behaviour.lock:
                    behaviour.status = int(changes.get("status", behaviour.status))
                    behaviour.delay_s = float(changes.get("delay_s", behaviour.delay_s))
                    behaviour.reply = str(changes.get("reply", behaviour.reply))
                    behaviour.delay_path = str(changes.get("delay_path", behaviour.delay_path))
                self.answer(200, "ok")
                return
            record = {
                "method": self.command, "path": parts.path, "query": parse_qs(parts.query),
                "headers": dict(self.headers.items()), "body": body.decode("utf-8", "replace"),
                "at": time.time(),
            }
            with behaviour.lock:
                status, delay_s, reply = behaviour.status, behaviour.delay_s, behaviour.reply
                delay_path = behaviour.delay_path
            if delay_s and parts.path.startswith(delay_path):
                time.sleep(delay_s)
            record["answered"] = status
            with log_lock:
                log.write(json.dumps(record) + "\n")
                log.flush()
            self.answer(status, reply)

        def answer(self, status: int, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    class Server(ThreadingHTTPServer):
        # the default backlog of 5 drops the connections of a burst (the client retries
        # its SYN a second later), which would measure the receiver, not the sender
        request_queue_size = 1024
        daemon_threads = True

    Server(("127.0.0.1", port), Handler).serve_forever()


class CallbackServer:
    """The tests' handle: start, stop (the port then refuses connections), start again on the
    same port, change its answers, read what it received."""

    def __init__(self, env: dict[str, str], directory: Path) -> None:
        self.env = env
        self.directory = directory
        self.port = free_port()
        self.log_path = directory / "callbacks.jsonl"
        self.log_path.touch()
        self.process: ServiceProcess | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CallbackServer:
        self.starts += 1
        self.process = start_service(
            ["-m", "tests.peers.callback_server", "--port", str(self.port), "--log", str(self.log_path)],
            self.env, self.directory / f"callback-server{self.starts}.log",
        )
        self.process.wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def control(self, **changes: Any) -> None:
        request = urllib.request.Request(
            self.url + CONTROL_PATH, data=json.dumps(changes).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    def requests(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()
    serve(args.port, args.log)


if __name__ == "__main__":
    main()
