"""/api/v1/finance: CSV exports and the dashboard summary, for the finance role (and admin)."""

from __future__ import annotations

import io
import zipfile

import marshmallow as ma
from flask import Response, stream_with_context
from flask.views import MethodView
from flask_smorest import Blueprint

from billing import clock
from billing.auth.access import requires
from billing.errors import InvalidInput, NotFound
from billing.finance import journals, metrics
from billing.finance.exports import EXPORTS, Export, export_csv
from billing.finance.recognition import finance_settings, resolve_scope
from billing.finance.schemas import ExportQuerySchema, SummaryQuerySchema, SummarySchema

blp = Blueprint(
    "finance",
    __name__,
    url_prefix="/api/v1/finance",
    description="Revenue recognition, deferred revenue and the exports an accountant imports.",
)


def _export(name: str, fmt: str) -> Export:
    export = EXPORTS.get(name)
    if export is None:
        raise NotFound(f"No export {name!r}; there are: {', '.join(EXPORTS)}.")
    if fmt not in export.formats:
        raise InvalidInput(
            f"{name} is exported as {', '.join(export.formats)} only.",
            errors={"format": [f"one of {', '.join(export.formats)}"]},
        )
    return export


def _attachment(body, filename: str, mimetype: str) -> Response:
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _journal_response(scope, fmt: str, part: int | None) -> Response:
    files = journals.journal_files(scope, fmt)
    parts = len(files)
    if part is not None:
        if part > len(files):
            raise InvalidInput(
                f"This journal has {len(files)} file(s).", errors={"part": ["out of range"]}
            )
        files = [files[part - 1]]
    if len(files) == 1:
        name, rows = files[0]
        response = _attachment(journals.to_csv_text(rows), name, "text/csv")
    else:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, rows in files:
                archive.writestr(name, journals.to_csv_text(rows))
        stem = f"revenue-journal_{scope.date_from}_{scope.date_to}_{fmt}.zip"
        response = _attachment(buffer.getvalue(), stem, "application/zip")
    response.headers["X-Journal-Parts"] = str(parts)
    return response


@blp.route("/exports/<string:name>.csv")
class ExportView(MethodView):
    @requires("finance")
    @blp.arguments(ExportQuerySchema, location="query", unknown=ma.RAISE)
    @blp.response(200, description="UTF-8 CSV, streamed (a zip for a Xero journal in parts)")
    def get(self, query, name):
        """An export for clinic-local days from..to (see the README (Finance) for each one)."""
        export = _export(name, query["format"])
        scope = resolve_scope(
            query["date_from"],
            query["date_to"],
            location=query["location"],
            tier=query["tier"],
            settings=finance_settings(),
        )
        if export.name == "revenue-journal":
            return _journal_response(scope, query["format"], query["part"])
        filename = f"{name}_{scope.date_from.isoformat()}_{scope.date_to.isoformat()}.csv"
        body = stream_with_context(export_csv(export, scope))
        return _attachment(body, filename, "text/csv")


@blp.route("/summary")
class SummaryView(MethodView):
    @requires("finance")
    @blp.arguments(SummaryQuerySchema, location="query", unknown=ma.RAISE)
    @blp.response(200, SummarySchema)
    def get(self, query):
        """Deferred revenue, this month's recognised revenue and payments, members and MRR."""
        on = query["on"] or clock.local_date(clock.now())
        return metrics.summary(on, finance_settings())
