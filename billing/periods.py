"""Calendar arithmetic for billing periods, done in the clinic's timezone so a month ends where
the clinic's month ends."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from dateutil.relativedelta import relativedelta


def add_interval(
    moment: datetime, interval: str, count: int = 1, tz: ZoneInfo | None = None
) -> datetime:
    local = moment.astimezone(tz) if tz else moment
    if interval == "month":
        result = local + relativedelta(months=count)
    elif interval == "year":
        result = local + relativedelta(years=count)
    elif interval == "day":
        result = local + relativedelta(days=count)
    else:
        raise ValueError(f"unknown interval {interval!r}")
    return result.astimezone(UTC)
