"""Start services as supervisord would (same executables, same environment), and stop them
with SIGTERM, measuring how long they take."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from smsbus.config import BusSettings

BIN_DIR = Path(sys.executable).parent
PROJECT_ROOT = Path(__file__).resolve().parents[2]


# every service with a metrics server: each test run gets ports of its own
SERVICES_WITH_METRICS = ("broker", "router", "triggers", "archiver", "webhooks", "campaigns")


def service_environment(database_url: str | None, data_dir: Path) -> dict[str, str]:
    """The environment a service gets from supervisord, with ports of its own.
    No database_url: the embedded PostgreSQL under data_dir, as for a new user."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSBUS_")}
    env.update(
        {
            "SMSBUS_BUS_NOTIFY_PORT": str(free_port()),
            "SMSBUS_BUS_PUBLISH_PORT": str(free_port()),
            "SMSBUS_BUS_SUBSCRIBE_PORT": str(free_port()),
            # small, so that a test can show a slow listener being dropped
            "SMSBUS_BROKER_MAX_LISTENER_BUFFER_BYTES": "65536",
            "SMSBUS_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"SMSBUS_{name.upper()}_METRICS_PORT": str(free_port()) for name in SERVICES_WITH_METRICS})
    if database_url is not None:
        env["SMSBUS_DATABASE_URL"] = database_url
    return env


def _ports_outside_the_ephemeral_range() -> Iterator[int]:
    """Candidate ports below the kernel's ephemeral range, starting at a place of this process's
    own. A port the kernel handed out with bind(0) can be handed out again, as the source port
    of any outgoing connection (to PostgreSQL, say), before the service under test binds it;
    ports below the range are never handed out that way."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    first, span = max(1024, low - 12000), min(12000, low - 1024)
    start = os.getpid() * 97 % span
    for step in range(span):
        yield first + (start + step) % span


_candidate_ports = _ports_outside_the_ephemeral_range()


def free_port() -> int:
    """A port no one has bound, for TCP and UDP alike, never returned twice in this session."""
    for port in _candidate_ports:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, socket.socket(
                socket.AF_INET, socket.SOCK_DGRAM
            ) as udp:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port left below the ephemeral range")


class ServiceProcess:
    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_port(self, port: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"port {port} not open after {timeout_s} s:\n{self.log()}")

    def log_mark(self) -> int:
        """Where the log ends now: wait_for_log(after=mark) looks only at what follows."""
        return len(self.log())

    def wait_for_log(self, text: str, timeout_s: float = 10.0, after: int = 0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log()[after:]:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged after {timeout_s} s:\n{self.log()}")
            time.sleep(0.02)

    def stop(self) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took to exit)."""
        if self.process.poll() is not None:
            return self.process.returncode, 0.0
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        return code, time.monotonic() - started

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def start_service(argv: list[str], env: dict[str, str], log_path: Path) -> ServiceProcess:
    """argv[0] is a console script of the venv (smsbus-broker) or `-m module`."""
    command = [sys.executable, *argv] if argv[0] == "-m" else [str(BIN_DIR / argv[0]), *argv[1:]]
    log = log_path.open("ab")
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
        start_new_session=True,
    )
    return ServiceProcess(process, log_path)


def environment_bus(env: dict[str, str]) -> BusSettings:
    """The bus endpoints a service started with this environment uses."""
    return BusSettings(
        notify_port=int(env["SMSBUS_BUS_NOTIFY_PORT"]),
        publish_port=int(env["SMSBUS_BUS_PUBLISH_PORT"]),
        subscribe_port=int(env["SMSBUS_BUS_SUBSCRIBE_PORT"]),
    )
