"""smsbus.toml plus SMSBUS_* overrides: defaults, precedence, and errors that name the setting."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from smsbus import config
from smsbus.errors import ConfigError
from smsbus.loop import LoopSettings


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("SMSBUS_"):
            monkeypatch.delenv(name)
    path = tmp_path / "smsbus.toml"
    monkeypatch.setenv("SMSBUS_CONFIG", str(path))
    return path


def test_defaults_need_no_file(config_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SMSBUS_CONFIG")
    monkeypatch.chdir(tmp_path)
    settings = config.load()
    assert settings.database_url is None and settings.uses_embedded_postgres
    assert settings.bus.notify_port == 16725
    assert settings.data_path == (tmp_path / "var").resolve()
    assert "pgsocket" in settings.resolved_database_url()


def test_file_then_environment(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file.write_text(
        'database_url = "postgresql://app@db.example/smsbus"\ndata_dir = "state"\n'
        "[bus]\nnotify_port = 17000\npublish_port = 17001\n"
        "[probe]\npoll_interval_s = 2.5\n"
    )
    monkeypatch.setenv("SMSBUS_BUS_PUBLISH_PORT", "17002")
    monkeypatch.setenv("SMSBUS_PROBE_METRICS_PORT", "9100")
    settings = config.load()
    assert settings.resolved_database_url() == "postgresql://app@db.example/smsbus"
    assert (settings.bus.notify_port, settings.bus.publish_port) == (17000, 17002)
    assert settings.data_path == (config_file.parent / "state").resolve()
    assert config.load_section("probe", LoopSettings) == LoopSettings(poll_interval_s=2.5, metrics_port=9100)


def test_bad_environment_value_names_setting_and_variable(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file.write_text("")
    monkeypatch.setenv("SMSBUS_BUS_NOTIFY_PORT", "seventy")
    with pytest.raises(ConfigError) as error:
        config.load()
    assert error.value.setting == "bus.notify_port"
    assert "SMSBUS_BUS_NOTIFY_PORT" in str(error.value) and "int" in str(error.value)


@pytest.mark.parametrize(
    ("text", "setting", "problem"),
    [
        ("[bus]\nnotify_port = 70000\n", "bus.notify_port", "<= 65535"),
        ('log_level = "LOUD"\n', "log_level", "LOUD"),
        ("colour = 1\n", "colour", "unknown setting"),
        ("[bus]\nspeed = 1\n", "bus", "unknown field `speed`"),
        ('database_url = "mysql is not postgres"\n', "database_url", "not a PostgreSQL URL"),
        ("[probe]\npoll_interval_s = -1\n", "probe.poll_interval_s", ">= 0"),
        ("[broken\n", "smsbus.toml", "not valid TOML"),
    ],
)
def test_bad_file_value_names_the_setting(config_file: Path, text: str, setting: str, problem: str) -> None:
    config_file.write_text(text)
    with pytest.raises(ConfigError) as error:
        config.load()
        config.load_section("probe", LoopSettings)
    assert setting in str(error.value)
    assert problem in str(error.value)


def test_named_config_file_must_exist(config_file: Path) -> None:
    with pytest.raises(ConfigError, match="SMSBUS_CONFIG: no such file"):
        config.load()


def test_settings_are_frozen(config_file: Path) -> None:
    config_file.write_text("")
    with pytest.raises(AttributeError):
        config.load().data_dir = "elsewhere"  # type: ignore[misc]
    assert isinstance(config.load(), msgspec.Struct)


def test_example_config_is_valid_and_shows_the_defaults(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from smsbus_broker.broker import BrokerSettings

    example = Path(__file__).resolve().parents[1] / "deploy" / "smsbus.example.toml"
    monkeypatch.setenv("SMSBUS_CONFIG", str(example))
    loaded = config.load()
    assert msgspec.structs.replace(loaded, base_dir=".") == config.Settings()
    assert config.load_section("broker", BrokerSettings) == BrokerSettings()
