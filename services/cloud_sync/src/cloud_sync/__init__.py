"""derbus cloud_sync service."""
