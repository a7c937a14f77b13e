"""Channel secrets kept out of the database (SPEC §13): an SMPP password or a SIM PIN lives in
a file its owner alone can read (0600), and `channels.settings` holds only the file's path
(`password_file`, `pin_file`). Saving a channel with an inline secret moves it into such a
file under <data_dir>/secrets, so the CLI, the API and the pages all keep it apart the same way.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from smsbus.errors import ConfigError

# an inline secret setting -> the setting that names its file instead
SECRET_FIELDS: dict[str, str] = {"password": "password_file", "pin": "pin_file"}
SECRETS_FOLDER = "secrets"


def read_secret(path: str, setting: str) -> str:
    """The secret in the file (one line, its line end dropped); ConfigError names the setting
    when the file is missing or others than its owner may read it."""
    try:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(setting, f"{path} is open to other users (mode {stat.filemode(mode)}): chmod 600 it")
        with open(path, encoding="utf-8") as file:
            return file.read().rstrip("\r\n")
    except OSError as e:
        raise ConfigError(setting, f"cannot read {path}: {e.strerror}") from None


def write_secret(folder: Path, channel: str, setting: str, value: str) -> Path:
    """<folder>/<channel>.<setting>, created 0600 (never readable by others, not even for a
    moment) and replaced atomically; the folder is 0700. Owned like the data folder above it,
    so services that run as the data folder's owner can read it when root wrote it."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{channel}.{setting}"
    partial = folder / f".{channel}.{setting}.{os.getpid()}"
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(value + "\n")
    owner = folder.parent.stat()
    if os.geteuid() == 0 and owner.st_uid != 0:
        for made in (folder, partial):
            os.chown(made, owner.st_uid, owner.st_gid)
    os.replace(partial, path)
    return path


def without_replaced_files(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings without the file of a secret given inline again (a new password replaces
    the saved one's file)."""
    return {k: v for k, v in settings.items()
            if not any(k == file_setting and settings.get(inline) for inline, file_setting in SECRET_FIELDS.items())}


def keep_secrets_apart(settings: Mapping[str, Any], channel: str, folder: Path) -> dict[str, Any]:
    """The settings with every inline secret written to its file and replaced by the path."""
    kept = dict(settings)
    for inline, file_setting in SECRET_FIELDS.items():
        value = kept.pop(inline, None)
        if value:
            kept[file_setting] = str(write_secret(folder, channel, inline, str(value)))
    return kept
