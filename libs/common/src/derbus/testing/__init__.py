"""Test support: real brokers and databases as fixtures, condition waits, bus recorders."""

from derbus.testing.servers import (
    ComponentUnavailableError,
    MosquittoServer,
    NatsCluster,
    PostgresServer,
    free_port,
    port_open,
)
from derbus.testing.wait import BusRecorder, wait_for, wait_until

__all__ = [
    "BusRecorder",
    "ComponentUnavailableError",
    "MosquittoServer",
    "NatsCluster",
    "PostgresServer",
    "free_port",
    "port_open",
    "wait_for",
    "wait_until",
]
