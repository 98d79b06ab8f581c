"""The clinic's rules, one by one, on plain facts (no database, no clock)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from billing.checkout import rules
from billing.checkout.rules import BlockedMembership, LineFacts, Person
from billing.staff.service import default_policy

TODAY = date(2026, 3, 2)
NURSE = Person("Nurse Ann", frozenset({"registered_nurse"}))
DOCTOR = Person("Dr Lee", frozenset({"physician"}))


def facts(**changes) -> LineFacts:
    base = LineFacts(
        client="Mei Tan",
        treatment="Botox",
        category="injectable",
        today=TODAY,
        location="Orchard",
        is_medical=True,
        policy=default_policy("injectable"),
        provider=NURSE,
        supervisor=DOCTOR,
        supervisor_on_duty=True,
    )
    return replace(base, **changes)


def test_a_clean_line_passes_every_rule():
    assert rules.check(facts()) == []


def test_membership_state_blocks_credits_on_a_membership_that_may_not_redeem():
    paused = BlockedMembership("Gold", "paused until 1 April 2026")
    blocked = facts(uses_credits=True, redeemable_balance=0, blocked=(paused,))
    violation = rules.membership_state(blocked)
    assert violation.rule == "membership_state"
    assert "Gold membership, which is paused until 1 April 2026" in violation.detail
    assert rules.membership_state(replace(blocked, uses_credits=False)) is None  # charged
    assert rules.membership_state(replace(blocked, redeemable_balance=1)) is None


def test_provider_credential_needs_one_the_policy_allows():
    bea = Person("Bea", frozenset())
    assert rules.provider_credential(facts(provider=bea)).detail == (
        "Bea may not perform Botox: injectable treatments need a valid physician, nurse "
        "practitioner, physician assistant or registered nurse credential, and Bea has no such "
        "credential on file."
    )
    lapsed = Person("Jo", frozenset(), {"registered_nurse": date(2026, 2, 1)})
    assert (
        "credential expired on 1 February 2026"
        in rules.provider_credential(facts(provider=lapsed)).detail
    )
    assert rules.provider_credential(facts(provider=bea, is_medical=False)) is None
    mia = Person("Mia", frozenset({"medical_aesthetician"}))
    assert rules.provider_credential(facts(provider=mia)) is not None
    device = facts(provider=mia, category="device", policy=default_policy("device"))
    assert rules.provider_credential(device) is None


def test_supervision_of_a_non_physician():
    assert rules.supervision(facts(supervisor=None)).rule == "supervision"
    assert "cannot supervise" in rules.supervision(facts(supervisor=NURSE)).detail
    off_duty = rules.supervision(facts(supervisor_on_duty=False))
    assert "not on duty at Orchard today (2 March 2026)" in off_duty.detail
    assert rules.supervision(facts(provider=DOCTOR, supervisor=None)) is None
    no_need = replace(default_policy("injectable"), needs_supervision=False)
    assert rules.supervision(facts(supervisor=None, policy=no_need)) is None
    assert rules.supervision(facts(supervisor=None, is_medical=False)) is None


def test_consultation_on_file_within_the_valid_days():
    needs = facts(requires_consultation=True, consultation_valid_days=365)
    assert "has none on file" in rules.consultation(needs).detail
    assert rules.consultation(replace(needs, consultation_on=date(2025, 3, 2))) is None
    stale = rules.consultation(replace(needs, consultation_on=date(2025, 3, 1)))
    assert "last one was on 1 March 2025" in stale.detail
    assert rules.consultation(facts()) is None


def test_min_interval_names_the_first_possible_date():
    f = facts(min_interval_days=28, last_done_on=date(2026, 2, 10))
    violation = rules.min_interval(f)
    assert violation.extra["first_possible_on"] == "2026-03-10"
    assert "first possible date is 10 March 2026" in violation.detail
    assert rules.min_interval(replace(f, last_done_on=date(2026, 2, 2))) is None  # 28 days ago
    assert rules.min_interval(replace(f, last_done_on=None)) is None


def test_expired_credit_says_when_it_expired():
    f = facts(uses_credits=True, expired_on=date(2026, 3, 1))
    violation = rules.expired_credit(f)
    assert "Botox credit expired on 1 March 2026" in violation.detail
    assert rules.expired_credit(replace(f, redeemable_balance=3)) is None
    assert rules.expired_credit(replace(f, uses_credits=False)) is None


def test_every_rule_that_blocks_is_reported_in_order():
    f = facts(
        provider=Person("Bea", frozenset()),
        supervisor=None,
        requires_consultation=True,
        min_interval_days=7,
        last_done_on=TODAY,
    )
    assert [v.rule for v in rules.check(f)] == [
        "provider_credential",
        "supervision",
        "consultation",
        "min_interval",
    ]
