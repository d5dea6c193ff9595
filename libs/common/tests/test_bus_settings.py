"""Bus settings: broker endpoints of a cluster, stable client ids, the implementation choice."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from derbus.bus import GmqttBus, MqttBus, make_bus
from derbus.settings import MqttSettings


def test_endpoints_default_to_host_and_port() -> None:
    assert MqttSettings(host="broker", port=1884).endpoints() == [("broker", 1884)]


def test_endpoints_of_a_cluster_in_order() -> None:
    settings = MqttSettings(brokers="n1:1883, n2:1884,10.0.0.3:1885")
    assert settings.endpoints() == [("n1", 1883), ("n2", 1884), ("10.0.0.3", 1885)]


@pytest.mark.parametrize("brokers", ["n1", "n1:", ":1883", "n1:99999", "n1:18x3"])
def test_a_malformed_endpoint_is_refused_naming_it(brokers: str) -> None:
    with pytest.raises(ValidationError, match="is not host:port"):
        MqttSettings(brokers=brokers)


def test_derived_client_id_is_stable_and_unique_per_root_service_site_and_replica() -> None:
    settings = MqttSettings(root="der/v1")
    first = settings.derived_client_id("peak_shaving", "site-1")
    assert first == settings.derived_client_id("peak_shaving", "site-1")
    assert first == "der_v1.peak_shaving.site-1.0"
    others = {
        MqttSettings(root="test/abc").derived_client_id("peak_shaving", "site-1"),
        settings.derived_client_id("cloud_sync", "site-1"),
        settings.derived_client_id("peak_shaving", "site-2"),
        MqttSettings(root="der/v1", replica="1").derived_client_id("peak_shaving", "site-1"),
    }
    assert first not in others
    assert len(others) == 4


def test_a_configured_client_id_wins() -> None:
    settings = MqttSettings(client_id="my-gateway")
    assert settings.derived_client_id("meter_gateway", "site-1") == "my-gateway"
    assert make_bus(settings, "meter_gateway", client_id="other").client_id == "my-gateway"


def test_make_bus_picks_the_implementation_and_gives_the_derived_id() -> None:
    fast = make_bus(MqttSettings(root="r"), "cloud_sync", site_id="s")
    assert isinstance(fast, GmqttBus)
    assert fast.client_id == "r.cloud_sync.s.0"
    threaded = make_bus(MqttSettings(root="r", client="paho"), "cloud_sync")
    assert isinstance(threaded, MqttBus)
    assert threaded.client_id == "r.cloud_sync.-.0"
    assert make_bus(MqttSettings(), "x", client_id="fixed").client_id == "fixed"
