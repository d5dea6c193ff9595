"""derbus meter_gateway service."""
