"""derbus edge_simulator service."""
