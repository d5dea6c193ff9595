"""Services started for a test in order and stopped in reverse, whatever the test does."""

from __future__ import annotations

from typing import Any, TypeVar

from derbus.service import Service

S = TypeVar("S", bound=Service[Any, Any])


class ServiceStack:
    """Services started in order and stopped, the last first, when the `async with` block ends.

    `ServiceStack(a, b)` starts `a` then `b` on entry; `await stack.start(c)` starts one more
    inside the block. A service whose start failed is stopped too (it may have connected).
    """

    def __init__(self, *services: Service[Any, Any]) -> None:
        self._first = services
        self.services: list[Service[Any, Any]] = []

    async def start(self, service: S) -> S:
        """Start `service` (stopped with the others at the end); returns it."""
        self.services.append(service)
        await service.start()
        return service

    async def stop(self) -> None:
        """Stop every service started so far, the last first."""
        while self.services:
            await self.services.pop().stop()

    async def __aenter__(self) -> ServiceStack:
        """Start the services given at construction; stop them again if one fails."""
        try:
            for service in self._first:
                await self.start(service)
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop every service started, the last first."""
        await self.stop()
