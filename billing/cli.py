"""The `flask billing ...` command group; each domain adds its own subcommands in init_app."""

from __future__ import annotations

import click
from flask.cli import AppGroup

billing_cli = AppGroup("billing", help="Membership billing commands.")


@billing_cli.group("keys")
def keys_group() -> None:
    """API keys."""


@keys_group.command("create")
@click.option("--role", required=True, type=click.Choice(["admin", "staff", "finance", "client"]))
@click.option("--name", default="", help="What the key is for (shown in the audit trail).")
@click.option("--member", "member_id", type=int, help="The member a client key is bound to.")
def create_key(role: str, name: str, member_id: int | None) -> None:
    """Create a key and print it once; only its hash is stored."""
    from billing.auth.service import create_api_key
    from billing.errors import DomainError

    try:
        row, plaintext = create_api_key(name=name or role, role=role, member_id=member_id)
    except DomainError as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(plaintext)
    click.echo(
        f"(key {row.id}, role {row.role}: store it now, it will not be shown again)", err=True
    )


@keys_group.command("revoke")
@click.argument("key_id", type=int)
def revoke_key(key_id: int) -> None:
    """Refuse a key from now on (other server processes within API_KEY_CACHE_SECONDS)."""
    from billing import clock
    from billing.auth.service import revoke_api_key
    from billing.errors import DomainError

    try:
        row = revoke_api_key(key_id, now=clock.now())
    except DomainError as exc:
        raise click.ClickException(exc.detail) from None
    click.echo(f"key {row.id} ({row.name}, {row.role}) revoked at {row.revoked_at.isoformat()}")
