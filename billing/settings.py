"""The clinic's settings as one value, read from the app config at the edge and passed into rules."""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

from flask import current_app, has_app_context


@dataclass(frozen=True)
class ClinicSettings:
    currency: str = "SGD"
    timezone: str = "Asia/Singapore"
    tax_rate_bp: int = 900
    prices_include_tax: bool = True
    grace_period_days: int = 7
    consultation_valid_days: int = 365

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def clinic_settings() -> ClinicSettings:
    if not has_app_context():
        return ClinicSettings()
    c = current_app.config
    return ClinicSettings(
        currency=c.get("CLINIC_CURRENCY", "SGD"),
        timezone=c.get("CLINIC_TIMEZONE", "Asia/Singapore"),
        tax_rate_bp=int(c.get("TAX_RATE_BP", 900)),
        prices_include_tax=bool(c.get("PRICES_INCLUDE_TAX", True)),
        grace_period_days=int(c.get("GRACE_PERIOD_DAYS", 7)),
        consultation_valid_days=int(c.get("CONSULTATION_VALID_DAYS", 365)),
    )
