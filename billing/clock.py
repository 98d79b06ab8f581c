"""The one source of "now". Rules take `now` as an argument; only the edges (views, CLI, jobs) ask here,
so tests can move time by setting app.config["CLOCK"]."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from flask import current_app, has_app_context


def utcnow() -> datetime:
    return datetime.now(UTC)


def now() -> datetime:
    clock: Callable[[], datetime] | None = (
        current_app.config.get("CLOCK") if has_app_context() else None
    )
    value = clock() if clock else utcnow()
    if value.tzinfo is None:
        raise ValueError("the clock must return timezone-aware datetimes")
    return value.astimezone(UTC)


def clinic_tz() -> ZoneInfo:
    name = current_app.config.get("CLINIC_TIMEZONE", "UTC") if has_app_context() else "UTC"
    return ZoneInfo(name)


def local_date(moment: datetime, tz: ZoneInfo | None = None) -> date:
    """The calendar day a moment falls on at the clinic (what a receptionist would call 'today')."""
    return moment.astimezone(tz or clinic_tz()).date()


def start_of_local_day(day: date, tz: ZoneInfo | None = None) -> datetime:
    """The UTC instant a clinic-local day begins: report periods are cut here, not at UTC midnight."""
    return datetime.combine(day, time.min, tzinfo=tz or clinic_tz()).astimezone(UTC)


def ensure_aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("naive datetime: every time in this service is timezone-aware")
    return value.astimezone(UTC)
