"""smsbus.toml plus SMSBUS_* environment overrides, validated into frozen msgspec Structs.

The shared part (database, bus endpoints, data directory) is `Settings`; each service
declares its own Struct for its own `[section]` and loads it with `load_section`.
A bad value raises ConfigError naming the setting and where it came from.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict

from smsbus.errors import ConfigError

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
# 0 turns a service's metrics server off (tests run many services side by side)
OptionalPort = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]

CONFIG_ENV = "SMSBUS_CONFIG"
DEFAULT_CONFIG_FILE = "smsbus.toml"
ENV_PREFIX = "SMSBUS_"


class BusSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the broker is: every service and client connects here."""

    host: str = "127.0.0.1"
    notify_port: Port = 16725  # UDP in, TCP listeners out
    publish_port: Port = 16726  # ZeroMQ XSUB: services publish here
    subscribe_port: Port = 16727  # ZeroMQ XPUB: services subscribe here
    # an absolute folder of CURVE keys (smsbus.bus_keys); empty: the ZeroMQ ports are plain
    curve_dir: str = ""

    def __post_init__(self) -> None:
        if self.curve_dir and not os.path.isabs(self.curve_dir):
            raise ValueError("curve_dir must be an absolute path")


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # None: smsbus runs its own PostgreSQL with data under data_dir
    database_url: str | None = None
    data_dir: str = "var"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    metrics_host: str = "127.0.0.1"
    bus: BusSettings = BusSettings()
    # where the supervisord template and examples live
    deploy_dir: str = "deploy"
    # the folder relative paths above are taken from: the config file's, else the cwd
    base_dir: str = "."
    # started as root, the services and the embedded PostgreSQL run as this system user
    # (created at the first `smsbus up`)
    service_user: str = "smsbus"

    @property
    def data_path(self) -> Path:
        return (Path(self.base_dir) / self.data_dir).resolve()

    @property
    def deploy_path(self) -> Path:
        return (Path(self.base_dir) / self.deploy_dir).resolve()

    @property
    def uses_embedded_postgres(self) -> bool:
        return self.database_url is None

    def resolved_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url
        from smsbus.embedded_pg import embedded_database_url

        return embedded_database_url(self.data_path)


S = TypeVar("S", bound=msgspec.Struct)


def config_file() -> Path | None:
    """The TOML file in force: $SMSBUS_CONFIG, else ./smsbus.toml if there is one."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(CONFIG_ENV, f"no such file: {named}")
        return path.resolve()
    default = Path(DEFAULT_CONFIG_FILE)
    return default.resolve() if default.is_file() else None


def read_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), f"not valid TOML: {e}") from None


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """The shared settings, from the file and the environment."""
    path = config_file()
    document = read_toml(path)
    shared = {k: v for k, v in document.items() if not _is_service_section(k, v)}
    shared.setdefault("base_dir", str(path.parent if path else Path.cwd()))
    settings = _convert(shared, Settings, "", os.environ if environ is None else environ)
    check_database_url("database_url", settings.database_url)
    return settings


def check_database_url(setting: str, url: str | None) -> None:
    """A libpq URL or conninfo string (None: not set), or ConfigError naming the setting."""
    if url is None:
        return
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        raise ConfigError(setting, f"not a PostgreSQL URL ({e}); e.g. postgresql://user@host/smsbus") from None


def load_section(section: str, struct: type[S], environ: Mapping[str, str] | None = None) -> S:
    """One service's `[section]`, overridden by SMSBUS_<SECTION>_<FIELD>."""
    document = read_toml(config_file())
    data = document.get(section, {})
    if not isinstance(data, dict):
        raise ConfigError(section, "must be a table ([section])")
    return _convert(data, struct, section, os.environ if environ is None else environ)


def validate(data: dict[str, Any], struct: type[S], section: str = "") -> S:
    """Settings stored elsewhere (a channel's jsonb): ConfigError names the bad field."""
    return _convert(data, struct, section, {})


def _is_service_section(key: str, value: Any) -> bool:
    return isinstance(value, dict) and key not in Settings.__struct_fields__


def _env_name(path: str) -> str:
    return ENV_PREFIX + path.replace(".", "_").replace("-", "_").upper()


def _overlay_environment(
    data: dict[str, Any], struct: type[msgspec.Struct], prefix: str, environ: Mapping[str, str]
) -> dict[str, str]:
    """Put SMSBUS_* values over the file's; returns setting -> origin for error messages."""
    origins: dict[str, str] = {}
    for field in msgspec.structs.fields(struct):
        path = f"{prefix}.{field.name}" if prefix else field.name
        nested = _struct_type(field.type)
        if nested is not None:
            inner = data.get(field.name, {})
            if not isinstance(inner, dict):
                raise ConfigError(path, "must be a table")
            data[field.name] = inner
            origins.update(_overlay_environment(inner, nested, path, environ))
            continue
        env_name = _env_name(path)
        if env_name in environ:
            data[field.name] = environ[env_name]
            origins[path] = env_name
    return origins


def _struct_type(annotation: Any) -> type[msgspec.Struct] | None:
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    return None


def _convert(
    data: dict[str, Any], struct: type[S], section: str, environ: Mapping[str, str]
) -> S:
    data = dict(data)
    origins = _overlay_environment(data, struct, section, environ)
    try:
        return msgspec.convert(data, struct, strict=False)
    except msgspec.ValidationError as e:
        raise _config_error(e, section, origins) from None


def _config_error(e: msgspec.ValidationError, section: str, origins: dict[str, str]) -> ConfigError:
    # msgspec says e.g. "Expected `int`, got `str` - at `$.bus.notify_port`"
    text = str(e)
    problem, _, where = text.partition(" - at `$")
    field = where.rstrip("`").lstrip(".")
    if not field:
        unknown = re.search(r"unknown field `([^`]+)`", text)
        field = unknown.group(1) if unknown else ""
        problem = "unknown setting" if unknown else problem
    setting = ".".join(p for p in (section, field) if p) or section or "settings"
    origin = origins.get(setting)
    return ConfigError(setting, problem + (f" (from {origin})" if origin else ""))
