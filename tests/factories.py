"""Build catalogue and member rows directly, for tests that are not about the catalogue API."""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import count

from billing.clinic.models import Location
from billing.extensions import db
from billing.members.models import Member
from billing.memberships import service as memberships
from billing.memberships.models import Membership
from billing.plans.models import Plan, PlanItem, PlanItemOption, PlanVersion, Treatment

_seq = count(1)


def treatment(code: str | None = None, *, price: int = 10000, **fields) -> Treatment:
    code = code or f"treatment-{next(_seq)}"
    row = Treatment(
        code=code,
        name=fields.pop("name", code.replace("-", " ").title()),
        category=fields.pop("category", "medical_facial"),
        list_price_minor=price,
        currency=fields.pop("currency", "SGD"),
        **fields,
    )
    db.session.add(row)
    db.session.flush()
    return row


def plan(
    items: list,
    *,
    code: str | None = None,
    price: int = 32700,
    kind: str = "tier",
    **version_fields,
) -> PlanVersion:
    """items: [(treatment, qty)] or [("choice", [t1, t2, t3], qty, label)]."""
    code = code or f"plan-{next(_seq)}"
    row = Plan(code=code, name=code.replace("-", " ").title(), kind=kind)
    db.session.add(row)
    version = PlanVersion(
        plan=row,
        version=1,
        price_minor=price,
        currency=version_fields.pop("currency", "SGD"),
        **version_fields,
    )
    db.session.add(version)
    for position, spec in enumerate(items):
        if spec[0] == "choice":
            _, options, qty, *rest = spec
            item = PlanItem(
                version=version,
                position=position,
                kind="choice",
                quantity=qty,
                label=rest[0] if rest else "Any one of",
            )
            item.options = [PlanItemOption(treatment=t) for t in options]
        else:
            t, qty, *rest = spec
            item = PlanItem(
                version=version,
                position=position,
                kind="treatment",
                treatment=t,
                quantity=qty,
                **(rest[0] if rest else {}),
            )
        db.session.add(item)
    db.session.flush()
    return version


def revise(version: PlanVersion, *, price: int, items: list | None = None) -> PlanVersion:
    new = PlanVersion(
        plan=version.plan, version=version.version + 1, price_minor=price, currency=version.currency
    )
    db.session.add(new)
    for position, (t, qty) in enumerate(
        items or [(i.treatment, i.quantity) for i in version.items]
    ):
        new.items.append(PlanItem(position=position, kind="treatment", treatment=t, quantity=qty))
    db.session.add(new)
    db.session.flush()
    return new


def location(code: str = "orchard") -> Location:
    row = db.session.execute(db.select(Location).filter_by(code=code)).scalar_one_or_none()
    if row is None:
        row = Location(code=code, name=code.title())
        db.session.add(row)
        db.session.flush()
    return row


def member(first: str = "Mei", last: str | None = None, **fields) -> Member:
    n = next(_seq)
    last = last or f"Tan{n}"
    row = Member(
        first_name=first,
        last_name=last,
        email=fields.pop("email", f"{first.lower()}.{last.lower()}@example.com"),
        **fields,
    )
    row.refresh_search_columns()
    db.session.add(row)
    db.session.flush()
    return row


def active_membership(
    version: PlanVersion,
    *,
    now: datetime,
    owner: Member | None = None,
    period_days: int = 30,
    invoice_ref: str | None = None,
    grant: bool = True,
) -> Membership:
    """A member who joined and paid the first period (granted as a paid invoice would)."""
    from billing.entitlements.service import GrantSource

    owner = owner or member()
    membership = memberships.join(owner, version, actor="test", now=now)
    if grant:
        memberships.record_paid_period(
            membership,
            period_start=now,
            period_end=now + timedelta(days=period_days),
            source=GrantSource(ref=invoice_ref or f"invoice:test-{membership.id}", actor="test"),
            now=now,
        )
    return membership
