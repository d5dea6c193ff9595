"""derbus load_manager service."""
