"""`smsbus up` as `make run` does it: supervisord, the embedded PostgreSQL, migrations, the
broker; `smsbus status` from another shell; `smsbus down`. No database URL is configured."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.peers.processes import BIN_DIR, PROJECT_ROOT, service_environment

WORKDIR = "_E2E_WORKDIR"  # where the new user types the commands (not a setting)


def smsbus(env: dict[str, str], *args: str, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN_DIR / "smsbus"), *args], env=env, cwd=env[WORKDIR], capture_output=True, text=True,
        timeout=timeout_s,
    )


@pytest.fixture
def fresh_install_env() -> Iterator[dict[str, str]]:
    """A working directory of a new user: no config, no database URL, nothing running."""
    workdir = Path(tempfile.mkdtemp(prefix="smsbus-e2e-"))  # short: the PostgreSQL socket lives below
    env = service_environment(None, workdir / "var")
    env.update({WORKDIR: str(workdir), "SMSBUS_DEPLOY_DIR": str(PROJECT_ROOT / "deploy")})
    yield env
    smsbus(env, "down")
    shutil.rmtree(workdir, ignore_errors=True)


def wait_all_running(env: dict[str, str], timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = smsbus(env, "status")
        if status.returncode == 0:
            return status.stdout
        if time.monotonic() > deadline:
            raise AssertionError(f"not all RUNNING:\n{status.stdout}{status.stderr}")
        time.sleep(0.3)


def start_foreground(env: dict[str, str]) -> subprocess.Popen[str]:
    """`smsbus up` as typed in a terminal, where Ctrl-C is SIGINT: a test run started in the
    background of a non-interactive shell (as CI may be) inherits SIGINT ignored, and Python
    keeps an ignored SIGINT ignored."""
    return subprocess.Popen(
        [str(BIN_DIR / "smsbus"), "up"], env=env, cwd=env[WORKDIR],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def stop_foreground(up: subprocess.Popen[str], env: dict[str, str], timeout_s: float) -> str:
    """Ctrl-C to `smsbus up`; its output once it has exited (what supervisord logged, if not)."""
    up.send_signal(signal.SIGINT)
    try:
        output, _ = up.communicate(timeout=timeout_s)
        return output
    except subprocess.TimeoutExpired:
        logs = sorted((Path(env[WORKDIR]) / "var" / "log").glob("*.log"))
        raise AssertionError("\n".join(f"== {log}\n{log.read_text()[-2000:]}" for log in logs)) from None


def program_states(status_output: str) -> dict[str, str]:
    states = {}
    for line in status_output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ("RUNNING", "STARTING", "STOPPED", "FATAL", "BACKOFF", "EXITED"):
            states[parts[0]] = parts[1]
    return states


def test_up_detached_runs_embedded_postgres_and_broker_then_down(fresh_install_env: dict[str, str]) -> None:
    env = fresh_install_env
    up = smsbus(env, "up", "--detach")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "applied 0001_create_messages.sql" in up.stdout

    status = wait_all_running(env)
    states = program_states(status)
    # every service program of deploy/supervisord.conf.template runs, whichever there are
    assert {"broker", "postgres", "router", "triggers", "archiver", "webhooks"} <= set(states), states
    assert set(states.values()) == {"RUNNING"}, states
    assert (Path(env[WORKDIR]) / "var" / "pgdata" / "PG_VERSION").exists()
    if os.geteuid() == 0:  # as the test suite runs here; otherwise all runs as its user anyway
        assert_nothing_runs_as_root_and_other_users_are_kept_out(env, up.stdout + up.stderr)

    sent = smsbus(env, "send", "--to", "+31612345678", "--body", "hi")
    assert sent.returncode == 0, sent.stderr
    # the router runs and no channel exists: the message ends NOCHANNEL (or is still QUEUED)
    assert re.search(r"^out +(QUEUED|NOCHANNEL) +1$", smsbus(env, "status").stdout, re.MULTILINE)

    again = smsbus(env, "up", "--detach")
    assert again.returncode == 1 and "already running" in again.stderr

    down = smsbus(env, "down")
    assert down.returncode == 0 and "smsbus is down" in down.stdout
    stopped = smsbus(env, "status")
    assert stopped.returncode == 3 and "not running" in stopped.stdout


def test_up_in_the_foreground_stops_everything_on_ctrl_c(fresh_install_env: dict[str, str]) -> None:
    env = fresh_install_env
    up = start_foreground(env)
    try:
        wait_all_running(env, timeout_s=60)
        output = stop_foreground(up, env, timeout_s=60)
    finally:
        if up.poll() is None:
            up.kill()
    assert "smsbus is up" in output
    assert smsbus(env, "status").returncode == 3


def test_ctrl_c_while_starting_stops_what_was_started(fresh_install_env: dict[str, str]) -> None:
    env = fresh_install_env
    up = start_foreground(env)
    try:
        deadline = time.monotonic() + 30
        # supervisord answers: it is up, the services are not all started yet
        while smsbus(env, "status").returncode == 3:
            assert time.monotonic() < deadline and up.poll() is None, "supervisord never came up"
            time.sleep(0.05)
        output = stop_foreground(up, env, timeout_s=60)
    finally:
        if up.poll() is None:
            up.kill()
    assert "smsbus is up" not in output, output
    assert smsbus(env, "status").returncode == 3


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    """A command run by an unprivileged local account (the one named nobody)."""
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv],
        capture_output=True, text=True, timeout=30,
    )


def assert_nothing_runs_as_root_and_other_users_are_kept_out(env: dict[str, str], up_output: str) -> None:
    """What `smsbus up` started as root left running (SPEC §13)."""
    var = Path(env[WORKDIR]) / "var"
    # `ps` shows every program of supervisord as the unprivileged service user
    supervisord_pid = (var / "run" / "supervisord.pid").read_text().strip()
    ps = subprocess.run(["ps", "-o", "user:16=,args=", "--ppid", supervisord_pid], capture_output=True, text=True)
    programs = [line.split(None, 1) for line in ps.stdout.splitlines()]
    assert len(programs) >= 5 and {user for user, _ in programs} == {"smsbus"}, ps.stdout

    # the services' role owns the schema and is no superuser: no COPY ... TO PROGRAM
    url = smsbus(env, "db", "url").stdout.strip()
    with psycopg.connect(url, autocommit=True) as conn:
        role = conn.execute("SELECT rolname, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert role == ("smsbus", False)
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'messages'").fetchone()
        assert owner == ("smsbus",)
        services = conn.execute(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE application_name IN ('router', 'triggers')"
        ).fetchall()
        assert services == [("smsbus",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("COPY (SELECT 1) TO PROGRAM 'id'")
    # a password is asked even of root, who can reach the socket
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(url.split("&passfile=")[0], connect_timeout=5).close()

    # `smsbus up` printed no password (its output may well end in a log: systemd's journal)
    admin_password = (var / "admin-password").read_text().strip()
    assert admin_password not in up_output and (var / "admin-password").stat().st_mode & 0o077 == 0

    secrets = var / "secrets" / "pgpass"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    socket_file = var / "pgsocket" / ".s.PGSQL.5432"
    assert stat.S_IMODE(socket_file.stat().st_mode) == 0o700
    assert stat.S_IMODE(socket_file.parent.stat().st_mode) == 0o700

    # the folder above var/ (mkdtemp: 0700) was opened only as far as needed: passable, not
    # listable (pgserver's own helper would have added o+rx on every folder up to /)
    assert stat.S_IMODE(var.parent.stat().st_mode) & 0o077 == 0o001
    assert stat.S_IMODE(var.stat().st_mode) == 0o750 and var.stat().st_uid == 0

    # another local account reads no secret and reaches no database
    for path in (secrets, var / "pgdata" / "PG_VERSION"):
        read = as_nobody("cat", str(path))
        assert read.returncode != 0 and "Permission denied" in read.stderr
    connect = as_nobody(sys.executable, "-c", f"import psycopg; psycopg.connect({url!r}, connect_timeout=5)")
    assert connect.returncode != 0 and "Permission denied" in connect.stderr, connect.stderr
