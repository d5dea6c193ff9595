"""Loaded only by `make test-dates`: time.sleep as a relative select() under libfaketime.

Debian's libfaketime 0.9.10 with Python >= 3.11 cannot fake the wall clock alone: with the
monotonic clock faked too, every threading wait with a timeout hangs (glibc's sem_clockwait
hands the faked deadline to the kernel, libfaketime issue 390); with it left real
(FAKETIME_DONT_FAKE_MONOTONIC=1, what `make test-dates` does), time.sleep fails with EINVAL
(clock_nanosleep with TIMER_ABSTIME gets a negative time, libfaketime issue 426, fixed after
0.9.10). A relative select() sleeps the same time without that call.
"""

from __future__ import annotations

import os
import select
import time

if os.environ.get("FAKETIME"):

    def _sleep(seconds: float) -> None:
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        select.select([], [], [], seconds)

    time.sleep = _sleep
