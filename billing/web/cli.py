"""`flask --app wsgi billing users ...`: the people who sign in to the pages."""

from __future__ import annotations

import secrets

import click
from flask.cli import AppGroup

users_cli = AppGroup("users", help="Accounts for the web pages (staff, finance, admin, members).")


@users_cli.command("create")
@click.option("--email", required=True)
@click.option("--role", required=True, type=click.Choice(["admin", "staff", "finance", "client"]))
@click.option("--member", "member_id", type=int, help="The member a client account belongs to.")
@click.option("--staff", "staff_id", type=int, help="The staff record of a staff account.")
@click.option(
    "--password",
    help="Without it a staff, finance or admin account gets a random one, printed once; a "
    "client signs in with an emailed code.",
)
def create(
    email: str, role: str, member_id: int | None, staff_id: int | None, password: str | None
) -> None:
    """Make an account; the first admin is made this way."""
    from billing.errors import DomainError
    from billing.web.auth import create_user

    generated = None
    if password is None and role != "client":
        generated = password = secrets.token_urlsafe(12)
    try:
        user = create_user(
            email=email, role=role, password=password, member_id=member_id, staff_id=staff_id
        )
    except DomainError as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(f"account {user.id}: {user.email} ({user.role})")
    if generated:
        click.echo(f"password: {generated}")
        click.echo("(shown once: give it to the person and ask them to keep it safe)", err=True)


@users_cli.command("set-password")
@click.option("--email", required=True)
@click.password_option()
def set_password_command(email: str, password: str) -> None:
    """Set a new password (signs the account out everywhere and lifts a lock-out)."""
    from billing.errors import DomainError
    from billing.web.auth import find_user, set_password

    user = find_user(email)
    if user is None:
        raise click.ClickException(f"There is no account for {email}.")
    try:
        set_password(user, password)
    except DomainError as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(f"password changed for {user.email}")


@users_cli.command("unlock")
@click.option("--email", required=True)
def unlock(email: str) -> None:
    """Lift a lock-out after too many wrong passwords."""
    from billing.extensions import db
    from billing.web.auth import find_user

    user = find_user(email)
    if user is None:
        raise click.ClickException(f"There is no account for {email}.")
    user.failed_logins = 0
    user.locked_until = None
    db.session.commit()
    click.echo(f"{user.email} can sign in again")


@users_cli.command("list")
def list_users() -> None:
    """Every account, with its role and whether it is locked."""
    from billing import clock
    from billing.extensions import db
    from billing.web.models import User

    now = clock.now()
    for user in db.session.scalars(db.select(User).order_by(User.id)):
        flags = []
        if user.is_locked(now):
            flags.append("locked")
        if user.is_disabled:
            flags.append("disabled")
        extra = f" member {user.member_id}" if user.member_id else ""
        click.echo(f"{user.id}\t{user.email}\t{user.role}{extra}\t{' '.join(flags)}")
