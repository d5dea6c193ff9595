"""Start-up stays light: the CLI module imports no modelling library (they load off the loop)."""

from __future__ import annotations

from derbus.testing.process import modules_loaded_by

HEAVY = ("pandas", "numpy", "sklearn", "matplotlib", "pvlib", "holidays", "joblib", "scipy")


def test_importing_the_service_loads_no_modelling_library() -> None:
    assert modules_loaded_by("forecaster.__main__", HEAVY) == []
