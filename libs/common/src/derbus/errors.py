"""The derbus error tree: one small hierarchy, wrapped at the boundaries."""

from __future__ import annotations


class DerbusError(Exception):
    """Base of every error derbus raises on purpose."""


class ConfigError(DerbusError):
    """Invalid configuration (settings, YAML, CLI options); the message names the field."""

    def __init__(self, message: str, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields = fields


class BusError(DerbusError):
    """The message bus failed (connect, subscribe, publish)."""


class BusNotConnectedError(BusError):
    """An operation needs a connected bus."""


class InvalidPayloadError(DerbusError):
    """A payload did not decode or validate against its topic's model."""


class DeviceError(DerbusError):
    """A field device (Modbus meter, inverter, battery) failed or answered nonsense."""


class SolverError(DerbusError):
    """An optimiser failed or reported an infeasible / unbounded problem."""


class StorageError(DerbusError):
    """A database or on-disk store failed."""


class SetpointRejectedError(DerbusError):
    """A setpoint was refused; the message is the reason sent in the acknowledgement."""
