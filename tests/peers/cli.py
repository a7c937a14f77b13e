"""Fixtures for testing the `smsbus` CLI in this process and channel programs under a real
supervisord (registered as a pytest plugin in tests/conftest.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from smsbus import config
from smsbus.cli import main
from smsbus.supervisor import Supervisor, render_config
from tests.peers.processes import BIN_DIR, PROJECT_ROOT


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli_env(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The CLI runs in this process (a subprocess per command would cost a second each):
    the same main(), exit code and output, with the environment a shell would give it."""
    env = {**service_env, "SMSBUS_DEPLOY_DIR": str(PROJECT_ROOT / "deploy")}
    for name, value in env.items():
        if name.startswith("SMSBUS_"):
            monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def smsbus(cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    def run(*args: str) -> Result:
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def supervisord(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Supervisor]:
    """A real supervisord with the rendered config (no embedded PostgreSQL: the test's own).
    Its programs stay root like the test run: the modem emulator's pty and pytest's temporary
    folders are root's (tests/e2e shows the services as the unprivileged user)."""
    cli_env = {**cli_env, "SMSBUS_SERVICE_USER": "root"}
    monkeypatch.setenv("SMSBUS_SERVICE_USER", "root")  # for the channel programs the CLI adds
    settings = config.load(cli_env)
    conf = render_config(settings, nodaemon=True)
    process = subprocess.Popen([str(BIN_DIR / "supervisord"), "-c", str(conf)], env=cli_env)
    supervisor = Supervisor(settings)
    supervisor.wait_running()
    yield supervisor
    supervisor.proxy.supervisor.shutdown()  # our child: wait() reaps it (shutdown() polls the pid)
    process.wait(30)


def secret_file(folder: Path, value: str) -> str:
    """A file holding a secret, as an operator would pass it with --password-file."""
    path = folder / f"secret-{len(list(folder.glob('secret-*')))}"
    path.write_text(value + "\n")
    return str(path)


def program_states(supervisor: Supervisor) -> dict[str, str]:
    return {p["name"]: p["statename"] for p in supervisor.processes()}
