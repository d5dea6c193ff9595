"""derbus peak_shaving service."""
