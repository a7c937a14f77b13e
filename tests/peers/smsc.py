"""The SMSC simulator (smsbus-smsc-sim) as a separate process on real loopback sockets, and a
small client for its control port."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from tests.peers.processes import ServiceProcess, free_port, start_service

SYSTEM_ID = "smsbus"
PASSWORD = "secret"


class Smsc:
    def __init__(self, process: ServiceProcess, port: int, control_port: int, pdu_log: Path) -> None:
        self.process = process
        self.port = port
        self.control_port = control_port
        self.pdu_log = pdu_log
        self.control_socket = socket.create_connection(("127.0.0.1", control_port), timeout=10)
        self.replies = self.control_socket.makefile("r")

    def command(self, line: str) -> str:
        self.control_socket.sendall(line.encode() + b"\n")
        reply = self.replies.readline().rstrip("\n")
        if not reply.startswith("ok"):
            raise AssertionError(f"simulator refused {line!r}: {reply}")
        return reply

    def stats(self) -> dict[str, Any]:
        return dict(json.loads(self.command("stats")[3:]))

    def pdus(self, direction: str | None = None, command: str | None = None) -> list[dict[str, Any]]:
        """Every PDU logged so far (the log is flushed first)."""
        self.command("flush")
        records = [json.loads(line) for line in self.pdu_log.read_text().splitlines() if line.strip()]
        return [
            r for r in records
            if "command" in r and (direction is None or r["dir"] == direction)
            and (command is None or r["command"] == command)
        ]

    def wait_bound(self, binds: int = 1, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len([b for b in self.stats()["bound"] if b != "-"]) < binds:
            if time.monotonic() > deadline:
                raise AssertionError(f"no bind within {timeout_s} s: {self.stats()}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.control_socket.close()
        self.process.stop()


def start_smsc(env: dict[str, str], directory: Path, *extra: str) -> Smsc:
    port, control_port = free_port(), free_port()
    pdu_log = directory / "smsc-pdus.jsonl"
    process = start_service(
        ["smsbus-smsc-sim", "--port", str(port), "--control-port", str(control_port),
         "--system-id", SYSTEM_ID, "--password", PASSWORD, "--log", str(pdu_log), "--seed", "1", *extra],
        env, directory / "smsc.log",
    )
    process.wait_for_port(control_port)
    return Smsc(process, port, control_port, pdu_log)
