"""Reading the other services' REST APIs (health, /metrics, peak_shaving, voltage, planner)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from derbus.errors import DerbusError

log = logging.getLogger(__name__)


class UpstreamError(DerbusError):
    """A service's API could not be reached or answered with an error (status 0 = unreachable)."""

    def __init__(self, service: str, status: int, detail: Any) -> None:
        super().__init__(f"{service}: {status or 'unreachable'}: {detail}")
        self.service = service
        self.status = status
        self.detail = detail


def invalid_total(metrics_text: str) -> float:
    """Sum of `derbus_messages_invalid_total` over topics in a Prometheus exposition."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name in ("derbus_messages_invalid", "derbus_messages_invalid_total"):
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


class Apis:
    """An HTTP client for the services named in `service_urls` (opened by the service)."""

    def __init__(self, urls: dict[str, str], timeout_s: float) -> None:
        self.urls = urls
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll is noise

    async def open(self) -> None:
        """Create the connection pool."""
        self._client = httpx.AsyncClient(timeout=self.timeout_s)

    async def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _url(self, service: str, path: str) -> str:
        base = self.urls.get(service)
        if base is None:
            raise UpstreamError(service, 0, "no URL configured (CONSOLE_SERVICE_URLS)")
        return base + path

    async def request(
        self, method: str, service: str, path: str, body: Any = None, timeout_s: float | None = None
    ) -> Any:
        """Call a service; its JSON answer, or UpstreamError with its status and detail."""
        if self._client is None:
            raise UpstreamError(service, 0, "console not started")
        try:
            response = await self._client.request(
                method, self._url(service, path), json=body, timeout=timeout_s or self.timeout_s
            )
        except httpx.HTTPError as err:
            raise UpstreamError(service, 0, str(err) or type(err).__name__) from err
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise UpstreamError(service, response.status_code, detail)
        if "json" in response.headers.get("content-type", ""):
            return response.json()
        return response.text

    async def get_or_none(self, service: str, path: str) -> Any:
        """GET, or None when the service is down or answers an error (logged at debug)."""
        try:
            return await self.request("GET", service, path)
        except UpstreamError as err:
            log.debug("%s", err)
            return None

    async def health(self) -> dict[str, tuple[bool, float | None]]:
        """Each service: API reachable, and its invalid (dead-lettered) payload total."""
        names = sorted(self.urls)
        texts = await asyncio.gather(*(self.get_or_none(n, "/metrics") for n in names))
        out: dict[str, tuple[bool, float | None]] = {}
        for name, text in zip(names, texts, strict=True):
            out[name] = (text is not None, invalid_total(text) if isinstance(text, str) else None)
        return out
