"""derbus voltage_coordinator service."""
