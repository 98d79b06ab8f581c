"""Signing in to the pages: staff, finance and admins with a password; members with a one-time
code sent by email (or a password if they set one).

The verbs at the top take `now` and never read the request; the views below call them. A signed-in
user becomes a billing.auth Principal (actor "user:<id>"), so the same role rules and the same
service functions apply to the pages as to the API."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import smtplib
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import (
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.security import check_password_hash, generate_password_hash

from billing import clock
from billing.auth.access import PUBLIC, current_principal, requires
from billing.auth.models import Role
from billing.auth.service import Principal
from billing.errors import Conflict, InvalidInput, NotFound
from billing.extensions import db
from billing.members.models import Member, normalize_email
from billing.web import web_blueprint
from billing.web.forms import CodeForm, PasswordSignInForm, RequestCodeForm
from billing.web.models import CODE_VALID_FOR, LOCKOUT, MAX_FAILED_LOGINS, User

log = logging.getLogger(__name__)
bp = web_blueprint("web_auth", __name__)

MIN_PASSWORD_LENGTH = 10
# Said for every failure, so the page never tells a stranger which emails have accounts.
WRONG = "That email and password do not match. Check both and try again."


# ------------------------------------------------------------------------------ verbs


class AccountLocked(Conflict):
    slug, title = "account-locked", "Account locked"


@dataclass(frozen=True)
class SignInResult:
    user: User | None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.user is not None


def _hash_password(password: str) -> str:
    """werkzeug's default (scrypt) unless PASSWORD_HASH_METHOD says otherwise."""
    method = current_app.config.get("PASSWORD_HASH_METHOD")
    return (
        generate_password_hash(password, method=method)
        if method
        else generate_password_hash(password)
    )


def _hash_code(code: str) -> str:
    """A sign-in code lives ten minutes and allows five tries: a keyed hash is enough."""
    key = current_app.config["SECRET_KEY"].encode()
    return "hmac-sha256$" + hmac.new(key, code.encode(), hashlib.sha256).hexdigest()


def _code_matches(stored: str | None, code: str) -> bool:
    return stored is not None and hmac.compare_digest(stored, _hash_code(code))


def find_user(email: str) -> User | None:
    return db.session.scalar(sa.select(User).where(User.email == normalize_email(email)))


def create_user(
    *,
    email: str,
    role: str,
    password: str | None = None,
    member_id: int | None = None,
    staff_id: int | None = None,
) -> User:
    """A person who may sign in. Clients are bound to their member record; others are not."""
    email = normalize_email(email)
    try:
        role = Role(role)
    except ValueError:
        raise InvalidInput(f"role must be one of {', '.join(r.value for r in Role)}.") from None
    if "@" not in email or len(email) > 254:
        raise InvalidInput("Give a valid email address.", errors={"email": ["not an email"]})
    if role == Role.CLIENT and member_id is None:
        raise InvalidInput("A client account belongs to one member: give --member.")
    if role != Role.CLIENT and member_id is not None:
        raise InvalidInput("Only client accounts belong to a member.")
    if member_id is not None and db.session.get(Member, member_id) is None:
        raise NotFound(f"There is no member {member_id}.")
    if staff_id is not None:
        from billing.staff.models import Staff

        if db.session.get(Staff, staff_id) is None:
            raise NotFound(f"There is no staff member {staff_id}.")
    if password is not None:
        _check_password_strength(password)
    if find_user(email) is not None:
        raise Conflict(f"There is already an account for {email}.", slug="duplicate-user")
    if member_id is not None and db.session.scalar(
        sa.select(User.id).where(User.member_id == member_id)
    ):
        raise Conflict(f"Member {member_id} already has an account.", slug="duplicate-user")
    user = User(
        email=email,
        role=role,
        member_id=member_id,
        staff_id=staff_id,
        password_hash=_hash_password(password) if password else None,
    )
    db.session.add(user)
    db.session.commit()
    return user


def set_password(user: User, password: str) -> None:
    _check_password_strength(password)
    user.password_hash = _hash_password(password)
    user.failed_logins = 0
    user.locked_until = None
    db.session.commit()


def _check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(
            f"A password needs at least {MIN_PASSWORD_LENGTH} characters.",
            errors={"password": [f"at least {MIN_PASSWORD_LENGTH} characters"]},
        )


def _locked_message(user: User, now: datetime) -> str:
    seconds = int((user.locked_until - now).total_seconds())
    minutes = max(1, -(-seconds // 60))
    return (
        f"Too many wrong attempts: this account is locked for {minutes} more minute"
        f"{'' if minutes == 1 else 's'}. Try again later, or ask an admin."
    )


def _record_failure(user: User, now: datetime) -> None:
    user.failed_logins += 1
    if user.failed_logins >= MAX_FAILED_LOGINS:
        user.locked_until = now + LOCKOUT
        user.failed_logins = 0
        log.warning("account %s locked after %s failed sign-ins", user.id, MAX_FAILED_LOGINS)
    db.session.commit()


def _record_success(user: User, now: datetime) -> None:
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    db.session.commit()


def sign_in_with_password(email: str, password: str, *, now: datetime) -> SignInResult:
    """Check a password; five failures in a row lock the account for fifteen minutes."""
    user = find_user(email)
    if user is None or user.is_disabled:
        _hash_password(password)  # about the same time spent whether or not the account exists
        return SignInResult(None, WRONG)
    if user.is_locked(now):
        return SignInResult(None, _locked_message(user, now))
    if not user.password_hash or not check_password_hash(user.password_hash, password):
        _record_failure(user, now)
        if user.is_locked(now):
            return SignInResult(None, _locked_message(user, now))
        return SignInResult(None, WRONG)
    _record_success(user, now)
    return SignInResult(user)


def account_for_code(email: str) -> User | None:
    """The account a sign-in code goes to: a member's email on file gets one made on first use."""
    user = find_user(email)
    if user is not None:
        return None if user.is_disabled else user
    member = db.session.scalar(
        sa.select(Member).where(Member.email_normalized == normalize_email(email))
    )
    if member is None:
        return None
    user = User(email=member.email_normalized, role=Role.CLIENT, member_id=member.id)
    db.session.add(user)
    db.session.commit()
    return user


def issue_login_code(user: User, *, now: datetime) -> str | None:
    """A fresh six-digit code valid for ten minutes (None while the account is locked)."""
    if user.is_locked(now):
        return None
    code = f"{secrets.randbelow(10**6):06d}"
    user.login_code_hash = _hash_code(code)
    user.login_code_expires_at = now + CODE_VALID_FOR
    db.session.commit()
    return code


def sign_in_with_code(email: str, code: str, *, now: datetime) -> SignInResult:
    """A code works once, within ten minutes; wrong codes count towards the lock-out."""
    wrong = "That code is not right or has expired. Ask for a new one."
    user = find_user(email)
    if user is None or user.is_disabled:
        return SignInResult(None, wrong)
    if user.is_locked(now):
        return SignInResult(None, _locked_message(user, now))
    code = "".join(ch for ch in code if ch.isdigit())
    if not user.has_live_code(now) or not _code_matches(user.login_code_hash, code):
        _record_failure(user, now)
        if user.is_locked(now):
            return SignInResult(None, _locked_message(user, now))
        return SignInResult(None, wrong)
    user.login_code_hash = None
    user.login_code_expires_at = None
    _record_success(user, now)
    return SignInResult(user)


def principal_for(user: User) -> Principal:
    return Principal(
        role=Role(user.role),
        actor=f"user:{user.id}",
        member_id=user.member_id,
        staff_id=user.staff_id,
    )


def send_login_code(user: User, code: str) -> None:
    """Email the code; with no mail server configured it goes to the app log instead."""
    config = current_app.config
    clinic = config.get("CLINIC_NAME", "the clinic")
    body = (
        f"Your sign-in code for {clinic} is {code}.\n\n"
        "It works once, for the next 10 minutes. If you did not ask for it, ignore this email."
    )
    host = config.get("MAIL_SERVER")
    if not host:
        log.warning("no MAIL_SERVER configured: sign-in code for %s is %s", user.email, code)
        return
    message = EmailMessage()
    message["Subject"] = f"Your sign-in code: {code}"
    message["From"] = config.get("MAIL_FROM") or f"no-reply@{host}"
    message["To"] = user.email
    message.set_content(body)
    try:
        with smtplib.SMTP(host, int(config.get("MAIL_PORT") or 25), timeout=10) as smtp:
            if config.get("MAIL_USE_TLS"):
                smtp.starttls()
            if config.get("MAIL_USERNAME"):
                smtp.login(config["MAIL_USERNAME"], config.get("MAIL_PASSWORD") or "")
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException):
        log.exception("could not send the sign-in code to %s", user.email)


# ------------------------------------------------------------------------------ session


def load_session_principal() -> Principal | None:
    """The principal of the signed-in user (set as g.session_principal_loader on web pages).

    Only on the web pages: the JSON API is authenticated by API keys alone, so a session cookie
    can never make a cross-site call to it (the API has no CSRF check)."""
    from billing.web import WEB_BLUEPRINTS

    if request.blueprint not in WEB_BLUEPRINTS:
        return None
    user_id = session.get("uid")
    if not user_id:
        return None
    user = db.session.get(User, user_id)
    if user is None or user.is_disabled or session.get("ver") != _session_version(user):
        session.clear()
        return None
    return principal_for(user)


def _session_version(user: User) -> str:
    """Changes when the password does, so a new password signs out every other session."""
    return (user.password_hash or "")[-12:]


def start_session(user: User) -> None:
    session.clear()
    session["uid"] = user.id
    session["ver"] = _session_version(user)


def home_for(principal: Principal | None) -> str:
    if principal is None:
        return url_for("web_auth.sign_in")
    if principal.role == Role.CLIENT:
        return url_for("web_portal.home")
    if principal.role == Role.FINANCE:
        return url_for("web_finance.dashboard")
    return url_for("web_desk.home")


def safe_next(target: str | None) -> str | None:
    """Only a path on this site: never bounce a fresh session to somebody else's page."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.netloc and parts.netloc == request.host and parts.scheme in ("http", "https"):
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    return target


# ------------------------------------------------------------------------------ views


@bp.get("/")
@requires(PUBLIC)
def index():
    return redirect(home_for(current_principal()))


@bp.route("/sign-in", methods=["GET", "POST"])
@requires(PUBLIC)
def sign_in():
    form = PasswordSignInForm()
    code_form = RequestCodeForm(prefix="code")
    status = 200
    if form.validate_on_submit():
        result = sign_in_with_password(form.email.data, form.password.data, now=clock.now())
        if result.ok:
            start_session(result.user)
            home = home_for(principal_for(result.user))
            return redirect(safe_next(request.args.get("next")) or home)
        flash(result.message, "error")
        status = 401
    elif request.method == "POST":
        status = 422
    return render_template("auth/sign_in.html", form=form, code_form=code_form), status


@bp.post("/sign-in/code")
@requires(PUBLIC)
def request_code():
    form = RequestCodeForm(prefix="code")
    if not form.validate_on_submit():
        flash("Give the email address the clinic has on file for you.", "error")
        return redirect(url_for("web_auth.sign_in"))
    email = normalize_email(form.email.data)
    user = account_for_code(email)
    if user is not None:
        code = issue_login_code(user, now=clock.now())
        if code is not None:
            send_login_code(user, code)
    # The same answer whether or not the address is on file.
    session["code_email"] = email
    flash(f"If {email} is on file, a six-digit code is on its way. It works for 10 minutes.")
    return redirect(url_for("web_auth.enter_code", next=safe_next(request.args.get("next"))))


@bp.route("/sign-in/code/enter", methods=["GET", "POST"])
@requires(PUBLIC)
def enter_code():
    form = CodeForm()
    if request.method == "GET" and session.get("code_email"):
        form.email.data = session["code_email"]
    status = 200
    if form.validate_on_submit():
        result = sign_in_with_code(form.email.data, form.code.data, now=clock.now())
        if result.ok:
            start_session(result.user)
            home = home_for(principal_for(result.user))
            return redirect(safe_next(request.args.get("next")) or home)
        flash(result.message, "error")
        status = 401
    elif request.method == "POST":
        status = 422
    return render_template("auth/enter_code.html", form=form), status


@bp.post("/sign-out")
@requires(PUBLIC)
def sign_out():
    session.clear()
    flash("You are signed out.")
    return redirect(url_for("web_auth.sign_in"))
