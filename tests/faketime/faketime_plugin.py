"""Loaded only by `make test-dates` (`-p faketime_plugin`): leaves out what cannot run under libfaketime.

VictoriaMetrics is a Go program: it reads the clock through the vDSO and raw system calls, not
through libc, so LD_PRELOAD'ed libfaketime cannot move its clock. It keeps the real date and
refuses every row more than two days ahead of it ("cannot insert row with too big timestamp
... exceeding the current time"), so a test writing readings of a faked 2027 into it cannot
pass. Tests that use the `victoria_metrics` fixture are deselected here (and counted in the
summary); `make test` runs them on the real clock.

Chromium (Debian's, through chromedriver) does not start under libfaketime: its zygote
processes never answer ("Failed to send GetTerminationStatus message to zygote"), so
`chromium --headless --dump-dom about:blank`, 5 s on the real clock, was still hanging when
killed after 60 s, and every browser test failed with "session not created: chrome not
reachable" (2026-12-07). Tests that use the `browser` fixture (tests/integration/
test_console_browser.py) are deselected too.
"""

from __future__ import annotations

import pytest

CLOCKLESS_FIXTURES = {
    "victoria_metrics": "VictoriaMetrics (Go) keeps the real clock",
    "browser": "chromium does not start under libfaketime",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests that need a server whose clock libfaketime cannot move."""
    kept, dropped = [], []
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        (dropped if names & set(CLOCKLESS_FIXTURES) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
        reasons = "; ".join(CLOCKLESS_FIXTURES.values())
        print(f"\nfaketime: {len(dropped)} tests deselected ({reasons})")
