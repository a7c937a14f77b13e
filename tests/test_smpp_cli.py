"""`smsbus channels add smpp NAME --host ...`: SMPP settings validated on save naming the field,
and under a running supervisord the SMPP channel's program follows the table, bound to the
simulator, without touching any other program."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from smsbus.supervisor import Supervisor
from tests.peers.cli import Result, program_states, secret_file
from tests.peers.metrics import value
from tests.peers.processes import free_port
from tests.peers.smsc import PASSWORD, SYSTEM_ID, Smsc
from tests.test_smpp import send, wait_for, wait_status

Conn = psycopg.Connection[dict[str, Any]]


def test_smpp_settings_are_validated_on_save_naming_the_field(
    smsbus: Callable[..., Result], cli_env: dict[str, str], conn: Conn, tmp_path: Path
) -> None:
    base = ("channels", "add", "smpp", "kpn", "--host", "smsc.example.net", "--system-id", "acme")
    window = smsbus(*base, "--set", "window=0")
    assert window.returncode == 1 and "bad setting window: Expected `int` >= 1" in window.stderr
    password = smsbus(*base, "--password-file", secret_file(tmp_path, "much-too-long"))
    assert password.returncode == 1 and "bad setting password" in password.stderr
    mode = smsbus(*base, "--bind-mode", "sideways")
    assert mode.returncode == 1 and "bad setting bind_mode" in mode.stderr
    classes = smsbus(*base, "--set", 'error_classes={"0x0B": "sometimes"}')
    assert classes.returncode == 1 and "error_classes" in classes.stderr
    no_host = smsbus("channels", "add", "smpp", "kpn", "--system-id", "acme")
    assert no_host.returncode == 2 and "--host" in no_host.stderr
    assert conn.execute("SELECT count(*) AS n FROM channels").fetchone() == {"n": 0}

    added = smsbus(*base, "--port", "2776", "--password-file", secret_file(tmp_path, "pw-x7Qz"),
                   "--set", "window=20")
    assert added.returncode == 0, added.stderr
    row = conn.execute("SELECT settings FROM channels WHERE name = 'kpn'").fetchone()
    # the password moved into a file of its own (0600): the table holds only its path
    password_file = Path(cli_env["SMSBUS_DATA_DIR"]) / "secrets" / "kpn.password"
    assert row["settings"] == {"host": "smsc.example.net", "system_id": "acme", "port": 2776,
                               "password_file": str(password_file), "window": 20}
    assert password_file.read_text() == "pw-x7Qz\n" and password_file.stat().st_mode & 0o777 == 0o600
    assert password_file.parent.stat().st_mode & 0o777 == 0o700
    assert "pw-x7Qz" not in smsbus("channels", "show", "kpn").stdout
    # a new password replaces the file's, the table still holds only the path
    assert smsbus("channels", "set", "kpn", "--password-file", secret_file(tmp_path, "other")).returncode == 0
    row = conn.execute("SELECT settings FROM channels WHERE name = 'kpn'").fetchone()
    assert row["settings"]["password_file"] == str(password_file) and "password" not in row["settings"]
    assert password_file.read_text() == "other\n"


def test_the_smpp_program_follows_the_table_under_supervisord(
    smsbus: Callable[..., Result], conn: Conn, supervisord: Supervisor, smsc: Smsc, tmp_path: Path
) -> None:
    others = program_states(supervisord)
    metrics_port = free_port()
    added = smsbus("channels", "add", "smpp", "sim", "--host", "127.0.0.1", "--port", str(smsc.port),
                   "--system-id", SYSTEM_ID, "--password-file", secret_file(tmp_path, PASSWORD),
                   "--set", "poll_interval_s=0.2", "--set", f"metrics_port={metrics_port}")
    assert added.returncode == 0, added.stderr
    assert "started program channel-sim" in added.stdout
    smsc.wait_bound()
    wait_status(conn, send(conn, "through the supervised SMPP channel"), "DELIVERED")
    # Prometheus finds the channel through the file_sd targets that deploy/prometheus.yml reads
    [target] = json.loads(supervisord.paths.channel_targets.read_text())
    assert target == {"targets": [f"127.0.0.1:{metrics_port}"], "labels": {"channel": "sim", "channel_type": "smpp"}}
    assert value(metrics_port, "smsbus_messages_total", status="DELIVERED", channel="sim") == 1

    disabled = smsbus("channels", "disable", "sim")
    assert "stopped program channel-sim" in disabled.stdout
    assert "channel-sim" not in program_states(supervisord)
    assert program_states(supervisord) == others
    assert json.loads(supervisord.paths.channel_targets.read_text()) == []
    # the program unbound on its way out
    wait_for(lambda: not [b for b in smsc.stats()["bound"] if b != "-"] or None, what="unbound")
    assert "unbind" in [p["command"] for p in smsc.pdus("in")]


def test_secrets_come_from_a_file_or_stdin_never_from_the_command_line(
    smsbus: Callable[..., Result], conn: Conn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ("channels", "add", "smpp", "kpn", "--host", "smsc.example.net", "--system-id", "acme")
    in_argv = smsbus(*base, "--password", "s3cret")
    assert in_argv.returncode == 2 and "s3cret" not in in_argv.stderr
    in_set = smsbus(*base, "--set", "password=s3cret")
    assert in_set.returncode == 2 and "password is a secret: give it with --password-file" in in_set.stderr
    assert "s3cret" not in in_set.stderr
    missing = smsbus(*base, "--password-file", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert conn.execute("SELECT count(*) AS n FROM channels").fetchone() == {"n": 0}

    monkeypatch.setattr("sys.stdin", io.StringIO("stdin-pw\n"))
    added = smsbus(*base, "--password-file", "-")
    assert added.returncode == 0, added.stderr
    changed = smsbus("channels", "set", "kpn", "--password-file", secret_file(tmp_path, "n3w"))
    assert changed.returncode == 0, changed.stderr
    refused = smsbus("channels", "set", "kpn", "password=n3wer")
    assert refused.returncode == 2 and "n3wer" not in refused.stderr
    row = conn.execute("SELECT settings FROM channels WHERE name = 'kpn'").fetchone()
    # kept in its own file (smsbus.secret_files), the table holds the path
    assert "password" not in row["settings"] and Path(row["settings"]["password_file"]).read_text() == "n3w\n"
    shown = smsbus("channels", "show", "kpn")
    assert "n3w" not in shown.stdout + shown.stderr and "settings.password_file" in shown.stdout
