"""CURVE keys for the ZeroMQ bus when services run on several hosts (docs/deployment.md).

With `bus.curve_dir` set, the broker's XSUB/XPUB speak CurveZMQ: traffic is encrypted and only
clients whose public key is in `<curve_dir>/clients/` may publish or subscribe. The folder:

    broker.key, broker.key_secret    the broker's pair (the secret only on the broker's host)
    client.key, client.key_secret    this host's services' pair
    clients/<name>.key               the broker's allow list: each host's client.key

`smsbus bus keys DIR [--broker]` makes what is missing. Secret files are 0600, owned by the
services' user when made as root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
from pathlib import Path

import zmq
import zmq.auth

from smsbus.errors import ConfigError

BROKER = "broker"
CLIENT = "client"
CLIENTS_DIR = "clients"


def public_key_file(folder: Path, name: str) -> Path:
    return folder / f"{name}.key"


def secret_key_file(folder: Path, name: str) -> Path:
    return folder / f"{name}.key_secret"


def load_pair(folder: Path, name: str) -> tuple[bytes, bytes]:
    """(public, secret); ConfigError naming bus.curve_dir when the file is missing or bad."""
    path = secret_key_file(folder, name)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ConfigError("bus.curve_dir", f"cannot read {path}: {e}") from None
    if secret is None:
        raise ConfigError("bus.curve_dir", f"{path} holds no secret key")
    return public, secret


def load_public(folder: Path, name: str) -> bytes:
    path = public_key_file(folder, name)
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ConfigError("bus.curve_dir", f"cannot read {path}: {e}") from None
    return public


def secure_client(sock: zmq.Socket[bytes], curve_dir: str) -> None:
    """A service's socket to the broker: this host's pair, the broker's public key."""
    if not curve_dir:
        return
    folder = Path(curve_dir)
    public, secret = load_pair(folder, CLIENT)
    sock.curve_serverkey = load_public(folder, BROKER)
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def secure_server(sock: zmq.Socket[bytes], curve_dir: str) -> None:
    """One of the broker's sockets, before bind."""
    public, secret = load_pair(Path(curve_dir), BROKER)
    sock.curve_server = True
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def make_keys(folder: Path, *, broker: bool, owner: pwd.struct_passwd | None) -> list[Path]:
    """The pairs that are missing (this host's client pair; with `broker`, the broker's pair
    and this host's client key in its allow list). Returns the files made."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [CLIENT] + ([BROKER] if broker else [])
    made = []
    for name in names:
        if secret_key_file(folder, name).exists():
            continue
        public, secret = zmq.auth.create_certificates(str(folder), name)
        os.chmod(secret, 0o600)
        made += [Path(public), Path(secret)]
    if broker:
        allowed = folder / CLIENTS_DIR / f"{socket.gethostname()}.key"
        if not allowed.exists():
            allowed.parent.mkdir(exist_ok=True)
            shutil.copyfile(public_key_file(folder, CLIENT), allowed)
            made.append(allowed)
    if owner is not None:
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, owner.pw_uid, owner.pw_gid)
    return made
