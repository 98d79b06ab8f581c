"""The clinic's rules at the front desk, one function each.

Each rule reads the facts about one line (gathered by the service: nothing here touches the
database or the clock) and returns None, or a RuleViolation whose sentence a receptionist can
read aloud. An admin may override any of them with a written reason."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta

from billing.errors import RuleViolation
from billing.staff.models import CredentialKind
from billing.staff.service import Policy, credential_words


@dataclass(frozen=True)
class Person:
    """A provider or supervisor as the rules see them on the day."""

    name: str
    credentials: frozenset[str]  # valid on the day
    lapsed: Mapping[str, date] = field(default_factory=dict)  # kind -> the day it expired

    @property
    def is_physician(self) -> bool:
        return CredentialKind.PHYSICIAN in self.credentials


@dataclass(frozen=True)
class BlockedMembership:
    plan_name: str
    state_words: str  # "past due since 3 March 2026 (grace period ended on 10 March 2026)"


@dataclass(frozen=True)
class LineFacts:
    client: str
    treatment: str
    category: str
    today: date  # clinic-local
    location: str
    quantity: int = 1
    is_medical: bool = False
    requires_consultation: bool = False
    min_interval_days: int = 0
    # Credits
    uses_credits: bool = False  # this line would be paid with credits
    redeemable_balance: int = 0  # live credits on memberships that may redeem now
    blocked: tuple[BlockedMembership, ...] = ()  # memberships with live credits that may not
    expired_on: date | None = None  # the newest credit for it expired unused on this day
    # Who performs it
    policy: Policy | None = None
    provider: Person | None = None
    supervisor: Person | None = None
    supervisor_on_duty: bool = False
    # History
    last_done_on: date | None = None
    consultation_on: date | None = None
    consultation_valid_days: int = 365


def say(day: date) -> str:
    """A date as a receptionist says it: 2 March 2026."""
    return f"{day.day} {day:%B %Y}"


def _category(facts: LineFacts) -> str:
    return facts.category.replace("_", " ")


def membership_state(f: LineFacts) -> RuleViolation | None:
    """Credits are usable only on an active membership, or a past-due one within its grace."""
    if not f.uses_credits or f.redeemable_balance >= f.quantity or not f.blocked:
        return None
    m = f.blocked[0]
    return RuleViolation(
        f"{f.client}'s {f.treatment} credits are on the {m.plan_name} membership, which is "
        f"{m.state_words}: they cannot be used now. Charge the treatment instead, or ask an "
        "admin to override.",
        rule="membership_state",
    )


def provider_credential(f: LineFacts) -> RuleViolation | None:
    """A medical procedure is performed only by someone whose valid credential the policy allows."""
    if not f.is_medical or f.provider is None or f.policy is None:
        return None
    allowed = set(f.policy.may_perform)
    if f.provider.credentials & allowed:
        return None
    lapsed = sorted((day, kind) for kind, day in f.provider.lapsed.items() if kind in allowed)
    if lapsed:
        day, kind = lapsed[-1]
        why = f"{f.provider.name}'s {credential_words([kind])} credential expired on {say(day)}"
    else:
        why = f"{f.provider.name} has no such credential on file"
    return RuleViolation(
        f"{f.provider.name} may not perform {f.treatment}: {_category(f)} treatments need a "
        f"valid {credential_words(f.policy.may_perform)} credential, and {why}.",
        rule="provider_credential",
    )


def supervision(f: LineFacts) -> RuleViolation | None:
    """A medical procedure by a non-physician needs a supervising physician on the visit, on
    duty at this location today, whose credential may supervise the category."""
    if not f.is_medical or f.provider is None or f.policy is None:
        return None
    if not f.policy.needs_supervision or f.provider.is_physician:
        return None
    if f.supervisor is None:
        return RuleViolation(
            f"{f.treatment} by {f.provider.name}, who is not a physician, needs a supervising "
            "physician recorded on the visit, and none is.",
            rule="supervision",
        )
    if not f.supervisor.credentials & set(f.policy.may_supervise):
        return RuleViolation(
            f"{f.supervisor.name} cannot supervise {_category(f)} treatments: that needs a valid "
            f"{credential_words(f.policy.may_supervise)} credential.",
            rule="supervision",
        )
    if not f.supervisor_on_duty:
        return RuleViolation(
            f"{f.supervisor.name} is not on duty at {f.location} today ({say(f.today)}): the "
            "supervising physician must be.",
            rule="supervision",
        )
    return None


def consultation(f: LineFacts) -> RuleViolation | None:
    """Some treatments need a consultation on file, no older than the clinic's limit."""
    if not f.requires_consultation:
        return None
    if f.consultation_on is None:
        return RuleViolation(
            f"{f.treatment} needs a consultation first, and {f.client} has none on file.",
            rule="consultation",
        )
    valid_until = f.consultation_on + timedelta(days=f.consultation_valid_days)
    if f.today > valid_until:
        return RuleViolation(
            f"{f.treatment} needs a consultation within the last {f.consultation_valid_days} "
            f"days; {f.client}'s last one was on {say(f.consultation_on)}.",
            rule="consultation",
        )
    return None


def min_interval(f: LineFacts) -> RuleViolation | None:
    """Some treatments need days between sessions (clinic-local days)."""
    if f.min_interval_days <= 0 or f.last_done_on is None:
        return None
    first_possible = f.last_done_on + timedelta(days=f.min_interval_days)
    if f.today >= first_possible:
        return None
    return RuleViolation(
        f"{f.client} last had {f.treatment} on {say(f.last_done_on)}; it needs "
        f"{f.min_interval_days} days between sessions, so the first possible date is "
        f"{say(first_possible)}.",
        rule="min_interval",
        first_possible_on=first_possible.isoformat(),
    )


def expired_credit(f: LineFacts) -> RuleViolation | None:
    """The client's credit for it expired unused and nothing live covers it."""
    if not f.uses_credits or f.expired_on is None:
        return None
    if f.redeemable_balance > 0 or f.blocked:
        return None
    return RuleViolation(
        f"{f.client}'s {f.treatment} credit expired on {say(f.expired_on)}, and there is no "
        "other credit for it. Charge it instead, or an admin may honour the expired credit.",
        rule="expired_credit",
        expired_on=f.expired_on.isoformat(),
    )


RULES: dict[str, Callable[[LineFacts], RuleViolation | None]] = {
    rule.__name__: rule
    for rule in (
        membership_state,
        provider_credential,
        supervision,
        consultation,
        min_interval,
        expired_credit,
    )
}


def check(facts: LineFacts) -> list[RuleViolation]:
    """Every rule that blocks this line, in the order the desk should deal with them."""
    return [v for v in (rule(facts) for rule in RULES.values()) if v is not None]
