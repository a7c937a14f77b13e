"""The modem emulator (smsbus-modem-emu) as a real process on a real pty, and its control socket."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.peers.processes import BIN_DIR


class EmulatedModem:
    def __init__(self, directory: Path, *, pin: str | None = None, auto_report: str = "off") -> None:
        self.link = directory / "modem"
        self.control_path = directory / "modem.ctl"
        self.log_path = directory / "modem-emu.log"
        command = [
            str(BIN_DIR / "smsbus-modem-emu"),
            "--control",
            str(self.control_path),
            "--link",
            str(self.link),
            "--auto-report",
            auto_report,
        ]
        if pin is not None:
            command += ["--pin", pin]
        self.process = subprocess.Popen(command, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while "ready" not in self.log_path.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"modem emulator did not start:\n{self.log_path.read_text()}")
            time.sleep(0.02)

    def call(self, command: str, **arguments: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(5)
            client.connect(str(self.control_path))
            client.sendall(json.dumps({"command": command, **arguments}).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = client.recv(65536)
                if not chunk:
                    break
                reply += chunk
        answer: dict[str, Any] = json.loads(reply)
        if not answer.pop("ok"):
            raise AssertionError(f"emulator refused {command}: {answer['error']}")
        return answer

    def sent(self) -> list[dict[str, Any]]:
        return list(self.call("sent")["sent"])

    def stored(self) -> list[int]:
        return list(self.call("status")["stored"])

    def commands(self) -> list[str]:
        return list(self.call("commands")["commands"])

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(10)
