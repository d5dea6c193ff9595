"""Settings: env prefixes, invalid values named at start-up."""

from __future__ import annotations

import pytest

from derbus.errors import ConfigError
from derbus.settings import MqttSettings, load_settings, load_settings_or_exit
from derbus.testing.example import EchoSettings


def test_env_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_PORT", "1999")
    monkeypatch.setenv("SITE_ID", "barcelona-3")
    monkeypatch.setenv("ECHO_LIMIT_KW", "11")
    s = load_settings(EchoSettings)
    assert (s.mqtt.port, s.site.id, s.limit_kw) == (1999, "barcelona-3", 11.0)


def test_invalid_service_field_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHO_LIMIT_KW", "-4")
    with pytest.raises(ConfigError, match=r"limit_kw \(ECHO_LIMIT_KW\)"):
        load_settings(EchoSettings)


def test_invalid_shared_field_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_PORT", "99999")
    with pytest.raises(ConfigError, match=r"port \(MQTT_PORT\)"):
        load_settings(EchoSettings)


def test_invalid_timezone_and_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SITE_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ConfigError, match="SITE_TIMEZONE"):
        load_settings(EchoSettings)
    with pytest.raises(ConfigError, match="root"):
        load_settings(MqttSettings, root="a/#")


def test_exit_with_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ECHO_LIMIT_KW", "zero")
    with pytest.raises(SystemExit) as info:
        load_settings_or_exit(EchoSettings)
    assert info.value.code == 2
    assert "ECHO_LIMIT_KW" in capsys.readouterr().err


def test_status_site_is_a_topic_level_named_when_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(EchoSettings).mqtt.status_site == "platform"
    monkeypatch.setenv("MQTT_STATUS_SITE", "site-7")
    assert load_settings(EchoSettings).mqtt.status_site == "site-7"
    monkeypatch.setenv("MQTT_STATUS_SITE", "site/7")
    with pytest.raises(ConfigError, match=r"status_site \(MQTT_STATUS_SITE\).*topic level"):
        load_settings(EchoSettings)
