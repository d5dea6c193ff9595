"""Start-up stays light: the CLI module imports no modelling library (they load off the loop)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("pandas", "numpy", "pvlib", "holidays", "scipy")


def test_importing_the_service_loads_no_modelling_library() -> None:
    code = (
        "import sys, feature_engineering.__main__; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    # a bound, not a timing: a fresh interpreter took over 60 s once at load ~25
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=240
    )
    assert out.stdout.strip() == ""
