"""supervisord: render its config from the templates in deploy/, start it, and talk to it
over its own XML-RPC interface (the same one supervisorctl uses).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import string
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport  # type: ignore[import-untyped]

from smsbus.config import Settings
from smsbus.embedded_pg import EmbeddedPostgres
from smsbus.errors import NotRunning, SmsbusError
from smsbus.privileges import started_as_root

POSTGRES_PROGRAM = "postgres"
MAIN_TEMPLATE = "supervisord.conf.template"
POSTGRES_TEMPLATE = "postgres.conf.template"
# one program per enabled channel, written into a file the main config includes
CHANNEL_TEMPLATE = "channel.conf.template"
CHANNEL_PROGRAM_PREFIX = "channel-"


class Paths:
    """Where supervisord keeps its socket, pid, rendered config and logs."""

    def __init__(self, settings: Settings) -> None:
        self.run_dir = settings.data_path / "run"
        self.log_dir = settings.data_path / "log"
        self.conf = self.run_dir / "supervisord.conf"
        self.socket = self.run_dir / "supervisor.sock"
        self.pidfile = self.run_dir / "supervisord.pid"
        self.channels_conf = self.run_dir / "channels.conf"
        # Prometheus file_sd targets: the channels that serve metrics (deploy/prometheus.yml)
        self.channel_targets = self.run_dir / "prometheus-channels.json"


def render_config(settings: Settings, *, nodaemon: bool) -> Path:
    paths = Paths(settings)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    values = {
        "run_dir": str(paths.run_dir),
        "log_dir": str(paths.log_dir),
        "base_dir": str(Path(settings.base_dir).resolve()),
        "bin_dir": str(Path(sys.executable).parent),
        "nodaemon": "true" if nodaemon else "false",
        "postgres_program": _render_postgres(settings, paths) if settings.uses_embedded_postgres else "",
        "channels_conf": str(paths.channels_conf),
        "program_user_line": _program_user_line(settings),
    }
    # no channel programs until the database is migrated: `smsbus up` then syncs them
    paths.channels_conf.write_text("")
    paths.conf.write_text(_template(settings, MAIN_TEMPLATE).substitute(values))
    return paths.conf


@dataclass(frozen=True)
class ChannelProgram:
    """A supervisord program for one enabled channel: smsbus-channel-<type> --channel <name>."""

    name: str
    type: str
    stop_wait_s: int
    # where the channel serves /metrics; 0: it does not
    metrics_port: int = 0

    @property
    def program(self) -> str:
        return CHANNEL_PROGRAM_PREFIX + self.name


def render_channel_programs(settings: Settings, channels: Iterable[ChannelProgram]) -> Path:
    """channels.conf for supervisord, and the channels' metrics endpoints for Prometheus
    (file_sd: Prometheus rereads the file when it changes, no reload needed)."""
    paths = Paths(settings)
    channels = list(channels)
    template = _template(settings, CHANNEL_TEMPLATE)
    common = {
        "log_dir": str(paths.log_dir),
        "bin_dir": str(Path(sys.executable).parent),
        "program_user_line": _program_user_line(settings),
    }
    text = "\n".join(
        template.substitute(common, program=c.program, name=c.name, type=c.type, stop_wait_s=c.stop_wait_s)
        for c in channels
    )
    paths.channels_conf.write_text(text)
    targets = [
        {"targets": [f"{_reachable(settings.metrics_host)}:{c.metrics_port}"],
         "labels": {"channel": c.name, "channel_type": c.type}}
        for c in channels if c.metrics_port
    ]
    written = paths.channel_targets.with_suffix(".tmp")
    written.write_text(json.dumps(targets, indent=2) + "\n")
    written.replace(paths.channel_targets)  # never a half-written file for Prometheus to read
    return paths.channels_conf


def _reachable(bind_host: str) -> str:
    """The address to scrape a server bound to bind_host at: the host's name for a wildcard."""
    return socket.getfqdn() if bind_host in ("", "0.0.0.0", "::") else bind_host


def _program_user_line(settings: Settings) -> str:
    """supervisord (root) starts the programs as the service user; as anyone else, as itself."""
    return f"user={settings.service_user}" if started_as_root() else ""


def _render_postgres(settings: Settings, paths: Paths) -> str:
    embedded = EmbeddedPostgres(settings.data_path, settings.service_user)
    values = {
        "postgres_command": shlex.join(embedded.server_argv()),
        "program_user_line": _program_user_line(settings),
        "log_dir": str(paths.log_dir),
    }
    return _template(settings, POSTGRES_TEMPLATE).substitute(values)


def _template(settings: Settings, name: str) -> string.Template:
    path = settings.deploy_path / name
    if not path.is_file():
        raise SmsbusError(f"supervisord template not found: {path} (set deploy_dir)")
    return string.Template(path.read_text())


def start(settings: Settings, *, nodaemon: bool) -> subprocess.Popen[bytes]:
    """Start supervisord; with nodaemon it stays our child, otherwise it daemonizes."""
    conf = render_config(settings, nodaemon=nodaemon)
    supervisord = Path(sys.executable).parent / "supervisord"
    return subprocess.Popen([str(supervisord), "-c", str(conf)])


class Supervisor:
    """A connection to a running supervisord's XML-RPC interface."""

    def __init__(self, settings: Settings) -> None:
        self.paths = Paths(settings)
        transport = SupervisorTransport(None, None, serverurl=f"unix://{self.paths.socket}")
        self.proxy: Any = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def is_running(self) -> bool:
        if not self.paths.socket.exists():
            return False
        try:
            return bool(self.proxy.supervisor.getState()["statename"] == "RUNNING")
        except (OSError, xmlrpc.client.Fault):
            return False

    def require_running(self) -> None:
        if not self.is_running():
            raise NotRunning("smsbus is not running (start it with `smsbus up`)")

    def wait_running(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.is_running():
            if time.monotonic() > deadline:
                raise SmsbusError(f"supervisord did not come up; see {self.paths.log_dir}/supervisord.log")
            time.sleep(0.1)

    def processes(self) -> list[dict[str, Any]]:
        self.require_running()
        return list(self.proxy.supervisor.getAllProcessInfo())

    def start_stopped(self, exclude: set[str]) -> list[str]:
        """Start every program not running yet (the services, after the migration)."""
        started = []
        for process in self.processes():
            if process["name"] in exclude or process["statename"] in ("RUNNING", "STARTING"):
                continue
            self.proxy.supervisor.startProcess(process["name"], True)
            started.append(process["name"])
        return started

    def sync_channels(self, settings: Settings, channels: Iterable[ChannelProgram]) -> dict[str, list[str]]:
        """Make the channel programs match `channels` (supervisorctl update, limited to the
        channel-* groups): removed ones stopped, changed ones restarted, new ones started.
        No other program is touched."""
        self.require_running()
        render_channel_programs(settings, channels)
        [[added, changed, removed]] = self.proxy.supervisor.reloadConfig()
        result: dict[str, list[str]] = {"started": [], "restarted": [], "stopped": []}
        for group in (g for g in removed + changed if g.startswith(CHANNEL_PROGRAM_PREFIX)):
            self._stop_group(group)
            self.proxy.supervisor.removeProcessGroup(group)
        for group in (g for g in changed + added if g.startswith(CHANNEL_PROGRAM_PREFIX)):
            self.proxy.supervisor.addProcessGroup(group)  # autostart=true starts it
        result["stopped"] = sorted(g for g in removed if g.startswith(CHANNEL_PROGRAM_PREFIX))
        result["restarted"] = sorted(g for g in changed if g.startswith(CHANNEL_PROGRAM_PREFIX))
        result["started"] = sorted(g for g in added if g.startswith(CHANNEL_PROGRAM_PREFIX))
        return result

    def restart(self, program: str) -> None:
        """Stop and start one program ("group:name" as getAllProcessInfo lists it), as
        `supervisorctl restart` does; the Manager's dashboard offers it to admins."""
        self.require_running()
        try:
            self.proxy.supervisor.stopProcess(program, True)
        except xmlrpc.client.Fault as e:
            if "NOT_RUNNING" not in e.faultString:
                raise SmsbusError(f"supervisord would not stop {program}: {e.faultString}") from None
        try:
            self.proxy.supervisor.startProcess(program, True)
        except xmlrpc.client.Fault as e:
            raise SmsbusError(f"supervisord would not start {program}: {e.faultString}") from None

    def _stop_group(self, group: str) -> None:
        try:
            self.proxy.supervisor.stopProcessGroup(group, True)
        except xmlrpc.client.Fault as e:
            if "NOT_RUNNING" not in e.faultString and "BAD_NAME" not in e.faultString:
                raise

    def shutdown(self, timeout_s: float = 90.0) -> None:
        self.require_running()
        pid = self.proxy.supervisor.getPID()
        self.proxy.supervisor.shutdown()
        deadline = time.monotonic() + timeout_s
        while _pid_alive(pid):
            if time.monotonic() > deadline:
                raise SmsbusError(f"supervisord (pid {pid}) still running after {timeout_s:.0f} s")
            time.sleep(0.1)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
