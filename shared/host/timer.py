"""Timer triggers for the local host, on the same NCRONTAB schedule as in Azure."""

from __future__ import annotations

from datetime import UTC, datetime


class Schedule:
    """When a six-field NCRONTAB expression (seconds first, as Azure Functions uses) fires next."""

    def __init__(self, expression: str, start: datetime | None = None) -> None:
        from croniter import croniter

        self._cron = croniter(expression, start or datetime.now(UTC), second_at_beginning=True)
        self.next = self._cron.get_next(datetime)

    def due(self, now: datetime | None = None) -> bool:
        """True once per scheduled time that has passed (missed ticks collapse into one, like past_due)."""
        now = now or datetime.now(UTC)
        if now < self.next:
            return False
        while self.next <= now:
            self.next = self._cron.get_next(datetime)
        return True
