"""derbus forecaster service."""
