"""The pages people use: sign-in, the front desk, the member portal, finance and the catalogue.

Server-rendered Jinja with a little progressive enhancement (static/app.js). A signed-in user is a
billing.auth Principal, so the pages call the same service functions under the same role rules as
the API. CSRF is checked on the web blueprints only: the JSON API authenticates with API keys, the
Stripe webhook with its signature, and the session cookie is not read for either."""

from __future__ import annotations

import logging

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException

from billing.errors import DomainError, Forbidden, Unauthorized

log = logging.getLogger(__name__)
csrf = CSRFProtect()

WEB_BLUEPRINTS = ("web_auth", "web_desk", "web_portal", "web_finance", "web_catalogue")


def init_app(app: Flask) -> None:
    from billing.cli import billing_cli
    from billing.web import auth, catalogue, desk, finance, models, portal  # noqa: F401
    from billing.web.cli import users_cli
    from billing.web.present import register_template_helpers

    app.session_interface = _CookieSessions()
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_SECURE"] = not (app.debug or app.testing)
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", 12 * 3600)  # a desk tablet stays open all day
    # CSRF is checked by _before_web_request for the web blueprints only (never the JSON API or
    # the Stripe webhook), so the global check is off.
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    csrf.init_app(app)

    for blueprint in (auth.bp, desk.bp, portal.bp, finance.bp, catalogue.bp):
        app.register_blueprint(blueprint)
    app.after_request(_security_headers)
    register_template_helpers(app)
    billing_cli.add_command(users_cli)


class _CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, opened without building the cookie's signing serializer
    when the request carries no cookie: every API call (signed by its key, cookie-less) paid for
    a serializer it never used."""

    def open_session(self, app: Flask, request) -> SecureCookieSession | None:
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def web_blueprint(name: str, import_name: str, **options) -> Blueprint:
    """A blueprint of pages: session sign-in, CSRF on every change, errors as pages."""
    assert name in WEB_BLUEPRINTS, name
    blueprint = Blueprint(name, import_name, **options)
    blueprint.before_request(_before_web_request)
    blueprint.register_error_handler(Unauthorized, _to_sign_in)
    blueprint.register_error_handler(Forbidden, _forbidden)
    blueprint.register_error_handler(DomainError, _domain_error)
    blueprint.register_error_handler(CSRFError, _csrf_error)
    blueprint.register_error_handler(HTTPException, _http_error)
    blueprint.register_error_handler(Exception, _unexpected)
    return blueprint


def _unexpected(error: Exception):
    """A bug: log it and say so on a page, with nothing half-saved."""
    from billing.extensions import db

    if current_app.config.get("PROPAGATE_EXCEPTIONS"):
        raise error
    db.session.rollback()
    log.exception("unhandled error on %s %s", request.method, request.path)
    return render_template(
        "error.html",
        title="Something went wrong",
        detail="Nothing was saved. Try again; if it happens again, tell an admin.",
    ), 500


def _before_web_request() -> None:
    """On a page: the session may name the user, and a change must carry the CSRF token."""
    from billing.web.auth import load_session_principal

    # Per request, even where an app context outlives one (tests, shells): a CSRF token or
    # verdict cached on `g` by an earlier request must not be reused.
    g.pop("csrf_token", None)
    g.pop("csrf_valid", None)
    g.session_principal_loader = load_session_principal
    if current_app.config.get("WTF_CSRF_ENABLED", True):
        csrf.protect()


def _is_fragment() -> bool:
    return request.headers.get("X-Requested-With") == "fetch"


def _to_sign_in(error: Unauthorized):
    from billing.extensions import db

    db.session.rollback()
    if _is_fragment():
        return Response("Your session has ended: sign in again.", status=401)
    return redirect(url_for("web_auth.sign_in", next=request.full_path.rstrip("?")))


def _forbidden(error: Forbidden):
    from billing.extensions import db

    db.session.rollback()
    return render_template(
        "error.html",
        title="Not for this account",
        detail="This page is not open to your account. If you need it, ask an admin.",
    ), 403


def _domain_error(error: DomainError):
    """A rule said no: on a page that changed something, say why and go back to it."""
    from billing.extensions import db

    db.session.rollback()
    if request.method == "POST" and not _is_fragment():
        from billing.web.auth import safe_next

        flash(error.detail, "error")
        back = safe_next(request.form.get("back")) or safe_next(request.referrer)
        return redirect(back or url_for("web_auth.index"))
    if _is_fragment():
        return Response(error.detail, status=error.status, mimetype="text/plain")
    return render_template("error.html", title=error.title, detail=error.detail), error.status


def _csrf_error(error: CSRFError):
    return render_template(
        "error.html",
        title="This form has expired",
        detail="The page was open too long or came from somewhere else. Go back, reload the "
        "page and try again.",
    ), 400


def _http_error(error: HTTPException):
    from billing.extensions import db

    db.session.rollback()
    return render_template(
        "error.html", title=error.name, detail=error.description
    ), error.code or 500


def _security_headers(response: Response) -> Response:
    """Pages load only their own scripts, styles and images; no page may be framed."""
    if request.blueprint in WEB_BLUEPRINTS and response.mimetype == "text/html":
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cache-Control", "no-store")
    return response
