"""derbus feature_engineering service."""
