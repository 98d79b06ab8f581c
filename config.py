"""Configuration, read from the environment. Never put secrets in this file."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


class Config:
    SECRET_KEY = _env("SECRET_KEY", "dev-only-not-secret")
    SQLALCHEMY_DATABASE_URI = _env("DATABASE_URL")
    SQLALCHEMY_ENGINE_OPTIONS: dict = {}
    # A pooled connection idle longer than this is pinged before use (billing/pool.py); 0: always.
    DB_PING_IDLE_SECONDS = float(_env("DB_PING_IDLE_SECONDS", "1"))
    # PostgreSQL's plan_cache_mode for the app's connections (billing/pool.py): the desk's
    # prepared statements were planned again on every execution under `auto`. Empty: the server's.
    DB_PLAN_CACHE_MODE = _env("DB_PLAN_CACHE_MODE", "force_generic_plan")
    MAX_CONTENT_LENGTH = int(_env("MAX_CONTENT_LENGTH", str(1024 * 1024)))
    JSON_SORT_KEYS = False
    # How long a process trusts an API key it has verified (a statement saved per request);
    # a key revoked elsewhere is refused here after at most this long. 0: check every time.
    API_KEY_CACHE_SECONDS = float(_env("API_KEY_CACHE_SECONDS", "5"))

    # OpenAPI (flask-smorest)
    API_TITLE = "Med-spa membership billing"
    API_VERSION = "v1"
    OPENAPI_VERSION = "3.0.3"
    OPENAPI_URL_PREFIX = "/api/v1"
    OPENAPI_JSON_PATH = "openapi.json"

    # The clinic. Rate and inclusivity of tax are settings, not constants in code.
    CLINIC_NAME = _env("CLINIC_NAME", "Cutis Medical Laser Clinics")
    CLINIC_TIMEZONE = _env("CLINIC_TIMEZONE", "Asia/Singapore")
    CLINIC_CURRENCY = _env("CLINIC_CURRENCY", "SGD")
    TAX_RATE_BP = int(_env("TAX_RATE_BP", "900"))  # basis points: 900 = 9 % GST
    PRICES_INCLUDE_TAX = _env("PRICES_INCLUDE_TAX", "true").lower() == "true"
    GRACE_PERIOD_DAYS = int(_env("GRACE_PERIOD_DAYS", "7"))
    CONSULTATION_VALID_DAYS = int(_env("CONSULTATION_VALID_DAYS", "365"))

    # Stripe: the features that need it refuse with a clear error when these are missing.
    STRIPE_API_KEY = _env("STRIPE_API_KEY")
    STRIPE_WEBHOOK_SECRET = _env("STRIPE_WEBHOOK_SECRET")
    STRIPE_API_BASE = _env("STRIPE_API_BASE")  # e.g. http://127.0.0.1:8420 for localstripe
    STRIPE_USE_LEGACY_PLANS = _env("STRIPE_USE_LEGACY_PLANS", "false").lower() == "true"
    STRIPE_WEBHOOK_TOLERANCE = int(_env("STRIPE_WEBHOOK_TOLERANCE", "300"))
    # queued: POST /webhooks/stripe verifies and stores the event, answers 200, and the worker
    # (`flask billing stripe work`) acts on it; inline: acted on in the request, as before.
    STRIPE_WEBHOOK_PROCESSING = _env("STRIPE_WEBHOOK_PROCESSING", "queued")
    STRIPE_WORKER_BATCH = int(_env("STRIPE_WORKER_BATCH", "50"))  # events a transaction
    STRIPE_WORKER_POLL_SECONDS = float(_env("STRIPE_WORKER_POLL_SECONDS", "0.5"))
    # A storm (more than STORM_BACKLOG events waiting, and more coming): the worker stands aside
    # for up to STORM_DEFER_SECONDS so the webhook answers Stripe in time; 0 turns it off.
    STRIPE_WORKER_STORM_BACKLOG = int(_env("STRIPE_WORKER_STORM_BACKLOG", "200"))
    STRIPE_WORKER_STORM_DEFER_SECONDS = float(_env("STRIPE_WORKER_STORM_DEFER_SECONDS", "30"))
    # A failed event is tried again after RETRY_SECONDS x 2^(attempts-1), up to MAX_ATTEMPTS
    # tries in all; then it stays failed for staff and `flask billing stripe replay`.
    STRIPE_EVENT_RETRY_SECONDS = float(_env("STRIPE_EVENT_RETRY_SECONDS", "30"))
    STRIPE_EVENT_MAX_ATTEMPTS = int(_env("STRIPE_EVENT_MAX_ATTEMPTS", "8"))

    STRIPE_RECONCILE_DAYS = int(_env("STRIPE_RECONCILE_DAYS", "3"))

    SCHEDULER_ENABLED = _env("SCHEDULER_ENABLED", "false").lower() == "true"

    # Mail: notifications are written to an outbox always, and sent only when MAIL_SERVER is set.
    MAIL_SERVER = _env("MAIL_SERVER")
    MAIL_PORT = int(_env("MAIL_PORT", "25"))
    MAIL_FROM = _env("MAIL_FROM", "memberships@clinic.example")
    MAIL_USERNAME = _env("MAIL_USERNAME")
    MAIL_PASSWORD = _env("MAIL_PASSWORD")
    MAIL_USE_TLS = _env("MAIL_USE_TLS", "false").lower() == "true"
    MAIL_USE_SSL = _env("MAIL_USE_SSL", "false").lower() == "true"
    MAIL_TIMEOUT = int(_env("MAIL_TIMEOUT", "10"))
    NOTIFY_LOOKBACK_DAYS = int(_env("NOTIFY_LOOKBACK_DAYS", "3"))


class DevelopmentConfig(Config):
    DEBUG = True
    STRIPE_WEBHOOK_PROCESSING = _env("STRIPE_WEBHOOK_PROCESSING", "inline")  # no worker to run
    SQLALCHEMY_DATABASE_URI = _env(
        "DATABASE_URL", f"sqlite:///{BASE_DIR / 'instance' / 'billing.db'}"
    )


class TestingConfig(Config):
    TESTING = True
    SECRET_KEY = "testing"
    SQLALCHEMY_DATABASE_URI = _env("TEST_DATABASE_URL", "sqlite://")
    STRIPE_WEBHOOK_SECRET = "whsec_test_secret"
    STRIPE_WEBHOOK_PROCESSING = "inline"  # a test that wants the queue says so
    MAIL_SERVER = None  # a developer's own mail server must never receive test mail


class ProductionConfig(Config):
    @classmethod
    def validate(cls) -> None:
        if not _env("DATABASE_URL"):
            raise RuntimeError("ProductionConfig needs DATABASE_URL (postgresql+psycopg://...)")
        if not _env("SECRET_KEY"):
            raise RuntimeError("ProductionConfig needs SECRET_KEY")


CONFIGS = {
    "development": DevelopmentConfig,
    "testing": TestingConfig,
    "production": ProductionConfig,
}


def config_for(name: str | None = None) -> type[Config]:
    name = name or _env("BILLING_ENV", "development")
    try:
        return CONFIGS[name]
    except KeyError:
        raise RuntimeError(f"BILLING_ENV must be one of {sorted(CONFIGS)}, not {name!r}") from None
