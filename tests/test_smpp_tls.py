"""SMPP over TLS (issue 14 item 4): the channel verifies the SMSC against a private CA
(`tls_ca_file`), sends and receives through a TLS front, refuses a certificate its CA did not
sign; the bind password comes from a 0600 file, and a file others may read is refused at
start. Certificates are made here with the openssl CLI; the front is tests/peers/tls_relay.py
before the SMSC simulator, each a real process."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.peers.processes import ServiceProcess, free_port, start_service
from tests.peers.smsc import PASSWORD, Smsc
from tests.test_smpp import add_channel as add_channel_with_password
from tests.test_smpp import send, wait_for, wait_status

Conn = psycopg.Connection[dict[str, Any]]
SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def openssl(*arguments: str, directory: Path) -> None:
    subprocess.run(["openssl", *arguments], cwd=directory, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
            directory=directory)


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    """ca.pem signed server.pem (for 127.0.0.1); other-ca.pem signed nothing of ours."""
    make_ca(tmp_path, "ca")
    make_ca(tmp_path, "other-ca")
    (tmp_path / "server.ext").write_text(SERVER_EXTENSIONS)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", directory=tmp_path)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext", directory=tmp_path)
    return tmp_path


@pytest.fixture
def tls_front(smsc: Smsc, certificates: Path, service_env: dict[str, str]) -> Iterator[tuple[ServiceProcess, int]]:
    port = free_port()
    relay = start_service(["-m", "tests.peers.tls_relay", "--port", str(port), "--target", str(smsc.port),
                           "--cert", str(certificates / "server.pem"), "--key", str(certificates / "server.key")],
                          service_env, certificates / "tls-relay.log")
    relay.wait_for_log("ready")
    yield relay, port
    relay.stop()


def add_channel(conn: Conn, smsc: Smsc, name: str = "sim", **settings: Any) -> None:
    """A channel whose password is in a file, not inline."""
    add_channel_with_password(conn, smsc, name, **settings)
    conn.execute("UPDATE channels SET settings = settings - 'password' WHERE name = %s", (name,))


def password_file(directory: Path, mode: int = 0o600) -> Path:
    path = directory / "smsc.password"
    path.write_text(PASSWORD + "\n")
    path.chmod(mode)
    return path


def test_tls_with_a_private_ca_sends_and_receives_and_a_foreign_ca_is_refused(
    conn: Conn, smsc: Smsc, tls_front: tuple[ServiceProcess, int], certificates: Path,
    broker: ServiceProcess, service_env: dict[str, str], tmp_path: Path,
) -> None:
    relay, port = tls_front
    secret = password_file(tmp_path)
    add_channel(conn, smsc, port=port, tls=True, tls_ca_file=str(certificates / "ca.pem"),
                password_file=str(secret))
    add_channel(conn, smsc, name="foreign", port=port, tls=True, tls_ca_file=str(certificates / "other-ca.pem"),
                password_file=str(secret))
    channel = start_service(["smsbus-channel-smpp", "--channel", "sim"], service_env, tmp_path / "sim.log")
    foreign = start_service(["smsbus-channel-smpp", "--channel", "foreign"], service_env, tmp_path / "foreign.log")
    try:
        smsc.wait_bound()
        wait_status(conn, send(conn, "over TLS"), "DELIVERED")
        smsc.command("inject +31611111111 +3197010000000 back over TLS")
        wait_for(lambda: conn.execute("SELECT body FROM messages WHERE direction = 'in'").fetchone(),
                 what="an incoming message over TLS")
        assert "relaying" in relay.log()
        foreign.wait_for_log("TLS handshake with 127.0.0.1 failed")
        assert "CERTIFICATE_VERIFY_FAILED" in foreign.log()
        health = conn.execute("SELECT connected FROM channel_health WHERE channel = 'foreign'").fetchone()
        assert health == {"connected": False}
        assert len([b for b in smsc.stats()["bound"] if b != "-"]) == 1
    finally:
        assert channel.stop()[0] == 0 and foreign.stop()[0] == 0
    assert PASSWORD not in channel.log() + foreign.log()


def test_a_password_file_others_can_read_is_refused_at_start_naming_the_setting(
    conn: Conn, smsc: Smsc, service_env: dict[str, str], tmp_path: Path
) -> None:
    add_channel(conn, smsc, password_file=str(password_file(tmp_path, 0o644)))
    process = start_service(["smsbus-channel-smpp", "--channel", "sim"], service_env, tmp_path / "sim.log")
    assert process.process.wait(10) != 0
    assert "bad setting password_file" in process.log() and "chmod 600" in process.log()
    assert PASSWORD not in process.log()
