"""Shipped register maps (YAML): a generic three-phase meter and the SunSpec inverter + storage map."""
