"""derbus console: the web face of the platform (fleet, site, decisions, planner, feeder)."""
