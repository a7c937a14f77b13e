"""Least privilege: started as root, smsbus runs its services and the embedded PostgreSQL as
an unprivileged system user (`service_user`, created on first start), never as root.

Only what that user must reach is opened to it: the folders above the data directory and the
virtualenv get the traverse bit for others (o+x: a name can be followed, not listed), and only
where that user could not pass already. pgserver's own helper adds o+rx up to / instead, which
lets any local account list e.g. /root: smsbus does not use it.
"""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
import stat
import subprocess
from pathlib import Path

from smsbus.errors import SmsbusError

log = logging.getLogger(__name__)

# groups a service user joins when the system has them: serial devices (GSM modems)
DEVICE_GROUPS = ("dialout",)
PR_SET_NO_NEW_PRIVS = 38


def started_as_root() -> bool:
    return os.geteuid() == 0


def ensure_service_user(name: str) -> pwd.struct_passwd:
    """The system user `name`, created when missing: no login shell, no home, its own group."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    command = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
               "--shell", "/usr/sbin/nologin", "--comment", "smsbus services", name]
    groups = [g for g in DEVICE_GROUPS if _group_exists(g)]
    if groups:
        command += ["--groups", ",".join(groups)]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        detail = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) else str(e)
        raise SmsbusError(f"cannot create the system user {name!r} for the services: {detail}") from None
    log.info("created system user %s", name)
    return pwd.getpwnam(name)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def can_traverse(user: pwd.struct_passwd, folder: Path) -> bool:
    """Whether `user` may pass through `folder` (its x bit for that user's class)."""
    return _permits(user, folder, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)


def can_read(user: pwd.struct_passwd, path: Path) -> bool:
    """Whether `user` may read `path` itself (the folders above aside)."""
    return _permits(user, path, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)


def _permits(user: pwd.struct_passwd, path: Path, owner_bit: int, group_bit: int, other_bit: int) -> bool:
    status = path.stat()
    if status.st_uid == user.pw_uid:
        return bool(status.st_mode & owner_bit)
    if status.st_gid in os.getgrouplist(user.pw_name, user.pw_gid):
        return bool(status.st_mode & group_bit)
    return bool(status.st_mode & other_bit)


def open_path_to(user: pwd.struct_passwd, path: Path) -> list[Path]:
    """Let `user` reach `path`: o+x on each folder above it that stops that user, nothing
    more. Returns the folders changed (the caller says so)."""
    changed = []
    for folder in reversed(path.resolve().parents):
        if not can_traverse(user, folder):
            folder.chmod(folder.stat().st_mode | stat.S_IXOTH)
            changed.append(folder)
    return changed


def private_folder(path: Path, owner: pwd.struct_passwd | None, mode: int = 0o700) -> None:
    """A folder only `owner` (None: whoever runs this) may use."""
    path.mkdir(parents=True, exist_ok=True)
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    path.chmod(mode)


def forbid_new_privileges() -> None:
    """No setuid program, file capability or similar may give this process or its children
    more rights than it has now (PR_SET_NO_NEW_PRIVS, as systemd's NoNewPrivileges=)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
