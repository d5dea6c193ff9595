"""Test support: real brokers and databases as fixtures, condition waits, bus recorders."""

from derbus.testing.builders import job_request, price_series, setpoint_command, time_series
from derbus.testing.servers import (
    ComponentUnavailableError,
    MosquittoServer,
    NatsCluster,
    PostgresServer,
    free_port,
    mqtt_test_settings,
    port_open,
)
from derbus.testing.stack import ServiceStack
from derbus.testing.wait import BusRecorder, wait_for, wait_until

__all__ = [
    "BusRecorder",
    "ComponentUnavailableError",
    "MosquittoServer",
    "NatsCluster",
    "PostgresServer",
    "ServiceStack",
    "free_port",
    "job_request",
    "mqtt_test_settings",
    "port_open",
    "price_series",
    "setpoint_command",
    "time_series",
    "wait_for",
    "wait_until",
]
