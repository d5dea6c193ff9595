"""The load manager's state: net balancing of its site beside job planning for its houses."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from load_manager.job_planning import JobPlanning
from load_manager.net_balancing import NetBalancing
from load_manager.settings import Settings

if TYPE_CHECKING:
    from derbus.service import Service

log = logging.getLogger(__name__)


class LoadManager:
    """`service.state` of the load manager: `net` (a `NetBalancing`) and `jobs` (a `JobPlanning`).

    Args:
        service: the service both publish through.
        clock: the current time.

    Raises:
        ConfigError: the neighbourhood or jobs file is invalid (naming file and line).
    """

    def __init__(self, service: Service[Settings, Any], clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self.net = NetBalancing(service, clock)
        self.jobs = JobPlanning(service, clock)

    async def restore(self) -> None:
        """Continue from the state files (at start-up)."""
        self.net.restore(self.clock())
        self.jobs.restore()
        current = self.net.integrator.current
        log.info(
            "restored balance %.1f Wh for period %s; %d jobs",
            self.net.integrator.balance_wh,
            current.start if current else None,
            len(self.jobs.book.entries),
        )

    def reconfigure(self, old: Settings, new: Settings) -> None:
        """Apply changed settings: the rule and loads now, the job weights at the next plan."""
        self.net.reconfigure(new)
        self.jobs.plan_dirty = True
