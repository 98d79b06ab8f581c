"""The finance pages: a dashboard (members by tier, MRR and its movement, payments, deferred
revenue, redemptions, with server-drawn SVG charts) and a download button for every export.

The numbers come from billing.finance (the same functions as /api/v1/finance); the downloads
stream the same export generators, authenticated by the session instead of an API key."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from datetime import date, timedelta

import sqlalchemy as sa
from flask import (
    Response,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)

from billing import clock
from billing.auth.access import requires
from billing.entitlements.models import EntryKind, LedgerEntry
from billing.errors import DomainError, InvalidInput, NotFound
from billing.extensions import db
from billing.finance import journals, metrics
from billing.finance.exports import EXPORTS, Export, export_csv
from billing.finance.recognition import Scope, finance_settings, resolve_scope
from billing.web import svg, web_blueprint
from billing.web.present import money

bp = web_blueprint("web_finance", __name__, url_prefix="/finance")

MONTHS_SHOWN = 12
EXPORT_NAMES = {
    "credit-ledger": "Credit ledger",
    "ledger-entries": "Ledger entries",
    "deferred-roll-forward": "Deferred revenue roll-forward",
    "deferred-waterfall": "Deferred revenue waterfall",
    "revenue-journal": "Revenue journal",
    "gst-sales": "GST sales",
    "payments-payouts": "Payments and payouts",
    "subscription-metrics": "Subscription metrics",
    "roster": "Membership roster",
    "redemptions": "Redemptions",
}


@dataclass
class MonthBar:
    label: str
    start: date
    redeemed: int = 0  # sessions or units redeemed, net of voids


def _first_of_month(day: date, months_back: int = 0) -> date:
    """The first of the month `months_back` months before `day`'s (negative: after)."""
    index = day.year * 12 + (day.month - 1) - months_back
    return date(index // 12, index % 12 + 1, 1)


def redemptions_by_month(first: date, today: date) -> list[MonthBar]:
    """Credits redeemed per clinic-local month (a void takes its redemption back)."""
    tz = clock.clinic_tz()
    bars = []
    start = first
    while start <= today:
        end = _first_of_month(start, -1)
        bars.append(MonthBar(f"{start:%b}", start))
        total = db.session.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(LedgerEntry.quantity), 0)).where(
                LedgerEntry.kind.in_([EntryKind.REDEEM, EntryKind.REVERSE]),
                LedgerEntry.created_at >= clock.start_of_local_day(start, tz),
                LedgerEntry.created_at < clock.start_of_local_day(end, tz),
            )
        )
        bars[-1].redeemed = -int(total or 0)
        start = end
    return bars


def _default_range(today: date) -> tuple[date, date]:
    """Last month, the range an accountant closes most often."""
    first_this = today.replace(day=1)
    last_month_end = first_this - timedelta(days=1)
    return last_month_end.replace(day=1), last_month_end


@bp.get("")
@requires("finance")
def dashboard():
    today = clock.local_date(clock.now())
    settings = finance_settings()
    summary = metrics.summary(today, settings)
    first = _first_of_month(today, MONTHS_SHOWN - 1)
    months = metrics.monthly_metrics(Scope(first, today, settings))
    this_month = months[-1]
    bars = redemptions_by_month(first, today)
    currency = settings.currency
    start, end = _default_range(today)

    def short_money(amount: int) -> str:
        text = money(amount, currency)
        return text[:-3] if text.endswith(".00") else text

    return render_template(
        "finance/dashboard.html",
        summary=summary,
        month=this_month,
        movement=this_month.mrr_end - this_month.mrr_start,
        mrr_chart=svg.line_chart(
            "Monthly recurring revenue (net of tax)",
            [(f"{m.period.start.astimezone(settings.tz):%b}", m.mrr_end) for m in months],
            short_money,
        ),
        redemptions_chart=svg.bar_chart(
            "Treatments redeemed per month", [(b.label, b.redeemed) for b in bars]
        ),
        redeemed_this_month=bars[-1].redeemed if bars else 0,
        exports=[
            (EXPORT_NAMES.get(e.name, e.name.replace("-", " ").capitalize()), e)
            for e in EXPORTS.values()
        ],
        range_from=request.args.get("from") or start.isoformat(),
        range_to=request.args.get("to") or end.isoformat(),
        today=today,
    )


def _parse_day(name: str) -> date:
    raw = request.args.get(name, "")
    try:
        return date.fromisoformat(raw)
    except ValueError:
        label = "From" if name == "from" else "To"
        raise InvalidInput(f"{label}: give a date like 2026-03-01.") from None


def _attachment(body, filename: str, mimetype: str) -> Response:
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response


def _export(name: str, fmt: str) -> Export:
    export = EXPORTS.get(name)
    if export is None:
        raise NotFound(f"There is no export called {name!r}.")
    if fmt not in export.formats:
        raise InvalidInput(f"{export.title} is exported as {', '.join(export.formats)} only.")
    return export


@bp.get("/exports/<name>.csv")
@requires("finance")
def download(name: str):
    """The export for the days picked on the dashboard, streamed as the API streams it."""
    fmt = request.args.get("format", "csv")
    try:
        export = _export(name, fmt)
        scope = resolve_scope(
            _parse_day("from"),
            _parse_day("to"),
            location=request.args.get("location") or None,
            tier=request.args.get("tier") or None,
            settings=finance_settings(),
        )
    except DomainError as exc:
        db.session.rollback()
        flash(exc.detail, "error")
        return redirect(
            url_for(
                "web_finance.dashboard",
                **{k: request.args[k] for k in ("from", "to") if request.args.get(k)},
            )
            + "#exports"
        )
    stem = f"{name}_{scope.date_from.isoformat()}_{scope.date_to.isoformat()}"
    if export.name == "revenue-journal":
        files = journals.journal_files(scope, fmt)
        if len(files) == 1:
            filename, rows = files[0]
            return _attachment(journals.to_csv_text(rows), filename, "text/csv")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for filename, rows in files:
                archive.writestr(filename, journals.to_csv_text(rows))
        return _attachment(buffer.getvalue(), f"{stem}_{fmt}.zip", "application/zip")
    body = stream_with_context(export_csv(export, scope))
    return _attachment(body, f"{stem}.csv", "text/csv")
