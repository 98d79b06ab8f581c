"""The ledger's invariants under random sequences of what happens at a clinic: periods paid and
granted, redemptions (some asking for too much, some by a household beneficiary, some in units),
reversals, pauses, time passing with expiry and rollover, refunds clawing credits back; a
treatment series sold in instalments (credits granted per instalment) and a gift of months held
on the ledger, claimed, and converted month by month.

After every step: a credit's balance is the sum of its entries and never went below zero, its
deferred value is never negative (and nothing is left on an empty credit), no expired credit was
ever redeemed, a redemption succeeds exactly when enough live credit exists, every grant's
allocations add up to its net amount to the cent, a series holds exactly its paid instalments'
share, and a gift's conversions move value from its holding lot without creating any."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy.orm import selectinload

from billing.entitlements import service as ledger
from billing.entitlements.models import Credit, CreditGrant, EntryKind, LedgerEntry
from billing.errors import Conflict, DomainError
from billing.extensions import db
from billing.gifts import service as gifts
from billing.gifts.models import Gift
from billing.memberships import service as memberships
from billing.memberships.models import Membership, State
from billing.payments.models import Invoice
from billing.plans.models import PlanItemOption
from billing.series import service as series
from billing.series.models import SeriesPurchase
from billing.settings import clinic_settings
from tests import factories as f

PERIOD = timedelta(days=30)
SETTINGS = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _clear_all_tables() -> None:
    """The app fixture gives one database per test; each example starts from empty tables."""
    db.session.rollback()
    for table in reversed(db.metadata.sorted_tables):
        db.session.execute(table.delete())
    db.session.commit()


class LedgerMachine(RuleBasedStateMachine):
    clock = None  # the test's clock and where each example starts, set before the run
    start = None

    @initialize()
    def open_the_clinic(self):
        _clear_all_tables()
        self.now = self.clock.set(self.start)
        t = {
            "facial": f.treatment(price=20000),
            "peel": f.treatment(price=8000),
            "mask": f.treatment(price=6000),
            "botox": f.treatment(price=1500, counted_in="unit", unit_label="unit"),
        }
        self.treatments = t
        household = f.plan(
            [
                (t["facial"], 1),
                ("choice", [t["peel"], t["mask"]], 1, "A peel or a mask"),
                (t["botox"], 20),
            ],
            price=65400,
        )
        rollover = f.plan(
            [(t["facial"], 2), (t["botox"], 20)],
            price=43600,
            unused_rule="rollover",
            rollover_max_periods=1,
            rollover_cap=1,
        )
        course = f.plan(
            [(t["facial"], 3), (t["botox"], 30)],
            kind="series",
            price=109000,
            credit_validity_days=60,
            instalments=3,
            grant_mode="per_instalment",
        )
        owner, partner, solo = f.member("Mei"), f.member("Jun"), f.member("Wei")
        buyer, self.recipient = f.member("Ana").id, f.member("Lin").id
        self.household = memberships.join(owner, household, actor="t", now=self.now)
        self.solo = memberships.join(solo, rollover, actor="t", now=self.now)
        memberships.add_beneficiary(self.household, partner, actor="t", now=self.now)
        self.members = {self.household.id: [owner.id, partner.id], self.solo.id: [solo.id]}
        self.memberships = [self.household.id, self.solo.id]
        self.next_period = {m: self.now for m in self.memberships}
        self.redeemed = defaultdict(int)  # membership -> net quantity redeemed, kept by us
        self.clawed: set[int] = set()
        for membership_id in self.memberships:
            self._pay_period(membership_id, 30000)
        # A series paid in three instalments (a third of each item per instalment), and a gift
        # of three months of the household tier, bought by Ana for Lin.
        self.settings = clinic_settings()
        sold = series.purchase(
            solo.id,
            plan_code=course.plan.code,
            payment="desk",
            instalments=3,
            actor="desk",
            now=self.now,
            settings=self.settings,
        )
        self.series = sold.membership.id
        gift = gifts.buy(
            buyer,
            plan_code=household.plan.code,
            months=3,
            recipient_name="Lin",
            payment="desk",
            actor="desk",
            now=self.now,
            settings=self.settings,
            claim_days=45,
        ).gift
        self.gift_code, self.gift_membership = gift.code, gift.membership_id
        self.gift_claimed = False
        self.members[self.series] = [solo.id]
        self.members[self.gift_membership] = [buyer]
        self.memberships += [self.series, self.gift_membership]
        self.covering = self._covering_items()

    # ------------------------------------------------------------------------------ helpers

    def _membership(self, membership_id) -> Membership:
        return db.session.get(Membership, membership_id)

    def _covering_items(self) -> dict[int, set[int]]:
        """Treatment -> the choice items that cover it (read straight from the catalogue)."""
        rows = db.session.execute(
            sa.select(PlanItemOption.treatment_id, PlanItemOption.item_id)
        ).all()
        result: dict[int, set[int]] = defaultdict(set)
        for treatment_id, item_id in rows:
            result[treatment_id].add(item_id)
        return result

    def _pay_period(self, membership_id, net):
        membership = self._membership(membership_id)
        start = self.next_period[membership_id]
        invoice = Invoice(
            member_id=membership.member_id,
            membership_id=membership_id,
            currency="SGD",
            total_minor=net,
            net_minor=net,
            status="paid",
        )
        db.session.add(invoice)
        db.session.flush()
        memberships.record_paid_period(
            membership,
            period_start=start,
            period_end=start + PERIOD,
            source=ledger.GrantSource(
                ref=f"invoice:{invoice.id}",
                actor="stripe",
                invoice_id=invoice.id,
                net_amount_minor=net,
            ),
            now=self.now,
        )
        self.next_period[membership_id] = start + PERIOD

    def _live_by_treatment(self, membership_id) -> dict[int, int]:
        """An independent oracle: the live balance per treatment, summed from the raw entries
        (not through the service's lots()); a choice credit counts for each of its options."""
        rows = db.session.execute(
            sa.select(
                Credit.treatment_id,
                Credit.plan_item_id,
                sa.func.sum(LedgerEntry.quantity),
                sa.func.max(LedgerEntry.expires_at),
            )
            .join(Credit, Credit.id == LedgerEntry.credit_id)
            .where(Credit.membership_id == membership_id)
            .group_by(LedgerEntry.credit_id, Credit.treatment_id, Credit.plan_item_id)
        ).all()
        result = {t.id: 0 for t in self.treatments.values()}
        for treatment_id, item_id, qty, expires in rows:
            if expires <= self.now or qty <= 0:
                continue
            for t in result:
                if t == treatment_id or item_id in self.covering.get(t, ()):
                    result[t] += int(qty)
        return result

    def _live_available(self, membership_id, treatment_id) -> int:
        return self._live_by_treatment(membership_id)[treatment_id]

    def _entry_count(self) -> int:
        return db.session.query(LedgerEntry).count()

    # -------------------------------------------------------------------------------- rules

    @rule(
        which=st.integers(0, 1),
        net=st.integers(0, 100_000),
    )
    def pay_the_next_period(self, which, net):
        membership_id = self.memberships[which]
        if self._membership(membership_id).state not in (State.ACTIVE, State.PAST_DUE):
            return
        self._pay_period(membership_id, net)

    @rule(
        which=st.integers(0, 3),
        treatment=st.sampled_from(["facial", "peel", "mask", "botox"]),
        quantity=st.integers(1, 25),
        by_beneficiary=st.booleans(),
    )
    def redeem(self, which, treatment, quantity, by_beneficiary):
        membership_id = self.memberships[which]
        people = self.members[membership_id]
        member_id = people[-1] if by_beneficiary else people[0]
        t = self.treatments[treatment]
        available = self._live_available(membership_id, t.id)
        before = self._entry_count()
        try:
            result = ledger.redeem(
                membership_ids=[membership_id],
                treatment=t,
                quantity=quantity,
                member_id=member_id,
                now=self.now,
                actor="desk",
            )
        except ledger.InsufficientCredits as refused:
            db.session.rollback()
            assert quantity > available, f"refused with {available} live for {quantity}"
            assert self._entry_count() == before
            if isinstance(refused, ledger.TreatmentNotIncluded):
                assert available == 0
            return
        assert quantity <= available, f"redeemed {quantity} with only {available} live"
        assert result.quantity == quantity
        assert all(e.expires_at > self.now for e in result.entries)
        self.redeemed[membership_id] += quantity

    @rule(pick=st.integers(0, 10_000))
    def reverse_a_redemption(self, pick):
        reversed_ids = sa.select(LedgerEntry.reverses_entry_id).where(
            LedgerEntry.reverses_entry_id.is_not(None)
        )
        candidates = (
            db.session.execute(
                sa.select(LedgerEntry)
                .where(LedgerEntry.kind == EntryKind.REDEEM, LedgerEntry.id.not_in(reversed_ids))
                .order_by(LedgerEntry.id)
            )
            .scalars()
            .all()
        )
        if not candidates:
            return
        entry = candidates[pick % len(candidates)]
        before = self._entry_count()
        try:
            back = ledger.reverse(entry, actor="desk", reason="wrong line", now=self.now)
        except Conflict as refused:
            # The credit's invoice was refunded after the treatment: the member owes for it,
            # and handing the credit back would give away a refunded credit.
            db.session.rollback()
            assert refused.slug == "credit-clawed-back"
            assert self._entry_count() == before
            same_grant = sa.select(Credit.id).where(Credit.grant_id == entry.credit.grant_id)
            clawed = db.session.execute(
                sa.select(LedgerEntry.id).where(
                    LedgerEntry.credit_id.in_(same_grant),
                    LedgerEntry.kind == EntryKind.CLAWBACK,
                    LedgerEntry.created_at >= entry.created_at,
                )
            ).first()
            assert clawed is not None
            return
        assert (back.quantity, back.value_minor) == (-entry.quantity, -entry.value_minor)
        self.redeemed[entry.membership_id] += entry.quantity  # entry.quantity is negative

    @rule(which=st.integers(0, 3))
    def pause_or_resume(self, which):
        membership = self._membership(self.memberships[which])
        if membership.state == State.ACTIVE:
            memberships.pause(membership, actor="client", now=self.now)
        elif membership.state == State.PAUSED:
            memberships.resume(membership, actor="client", now=self.now)

    @rule(days=st.integers(1, 40))
    def time_passes(self, days):
        self.now = self.clock.advance(days=days)

    @rule(number=st.integers(1, 4))
    def pay_a_series_instalment(self, number):
        before = self._entry_count()
        try:
            series.pay_instalment(
                self.series,
                number,
                payment="desk",
                actor="desk",
                now=self.now,
                settings=self.settings,
            )
        except Conflict as refused:  # out of order, or the series is paused
            db.session.rollback()
            assert refused.slug in ("instalment-out-of-order", "membership-paused")
            assert self._entry_count() == before
        except DomainError as refused:  # there is no instalment 4
            db.session.rollback()
            assert number == 4 and refused.status == 404
            assert self._entry_count() == before

    @precondition(lambda self: not self.gift_claimed)
    @rule()
    def claim_the_gift(self):
        gift = db.session.execute(sa.select(Gift)).scalar_one()
        try:
            gifts.claim(
                self.gift_code,
                member_id=self.recipient,
                actor="client",
                now=self.now,
                settings=self.settings,
            )
        except Conflict as refused:
            db.session.rollback()
            # Too late, or its purchase was refunded (nothing is left to convert).
            assert refused.slug in ("gift-expired", "holding-empty")
            assert refused.slug != "gift-expired" or self.now >= gift.claim_by
            return
        assert self.now < gift.claim_by
        self.gift_claimed = True
        self.members[self.gift_membership] = [self.recipient]

    @rule(days=st.integers(25, 35))
    def a_month_of_the_gift_passes(self, days):
        """Time passes and the gift's next month (if claimed) becomes credits."""
        self.now = self.clock.advance(days=days)
        gifts.grant_due_gift_months(self.now, settings=self.settings)

    @rule()
    def nightly_expiry(self):
        gifts.grant_due_gift_months(self.now, settings=self.settings)
        for membership_id in self.memberships:
            membership = self._membership(membership_id)
            ledger.expire_unused(membership, now=self.now)
            if membership.state == State.PAUSED:
                continue
            stale = [lot for lot in ledger.lots([membership_id]) if lot.expires_at <= self.now]
            assert stale == [], "a credit past its expiry survived the nightly run"

    @precondition(lambda self: len(self.clawed) < 6)
    @rule(pick=st.integers(0, 10_000), partial=st.booleans())
    def refund_an_invoice(self, pick, partial):
        invoices = db.session.execute(sa.select(Invoice).order_by(Invoice.id)).scalars().all()
        invoice = invoices[pick % len(invoices)]
        refunded = invoice.net_minor // 2 if partial else None
        result = ledger.clawback(
            invoice.id,
            source_ref=f"re_{invoice.id}",
            now=self.now,
            actor="stripe",
            refunded_net_minor=refunded,
        )
        if invoice.id in self.clawed:
            assert result.entries == [] and result.shortfall_minor == 0
        self.clawed.add(invoice.id)
        assert result.clawed_value_minor >= 0 and result.shortfall_minor >= 0

    # --------------------------------------------------------------------------- invariants

    @invariant()
    def the_ledger_adds_up(self):
        if not hasattr(self, "memberships"):
            return
        entries = (
            db.session.execute(
                sa.select(LedgerEntry).order_by(LedgerEntry.credit_id, LedgerEntry.id)
            )
            .scalars()
            .all()
        )
        first: dict[int, LedgerEntry] = {}
        running_qty: dict[int, int] = defaultdict(int)
        running_value: dict[int, int] = defaultdict(int)
        redeemed: dict[int, int] = defaultdict(int)
        for e in entries:
            first.setdefault(e.credit_id, e)
            running_qty[e.credit_id] += e.quantity
            running_value[e.credit_id] += e.value_minor
            assert running_qty[e.credit_id] >= 0, f"credit {e.credit_id} went below zero"
            assert running_value[e.credit_id] >= 0, f"credit {e.credit_id} value below zero"
            if e.kind == EntryKind.REDEEM:
                assert e.expires_at > e.created_at, "an expired credit was redeemed"
            if e.kind in (EntryKind.REDEEM, EntryKind.REVERSE):
                redeemed[e.membership_id] -= e.quantity
        for credit_id, qty in running_qty.items():
            if qty == 0:
                assert running_value[credit_id] == 0, f"value stranded on empty credit {credit_id}"
        # The service's view of each credit is the sum of its entries.
        lots = {lot.credit.id: lot for lot in ledger.lots(self.memberships, include_empty=True)}
        assert {cid: lot.remaining for cid, lot in lots.items()} == dict(running_qty)
        assert {cid: lot.value_minor for cid, lot in lots.items()} == dict(running_value)
        # What we redeemed (less what we reversed) is what the ledger says was redeemed.
        for membership_id in self.memberships:
            assert redeemed[membership_id] == self.redeemed[membership_id]
        # Every grant's credits share its net amount to the cent, and start with that grant.
        grants = sa.select(CreditGrant).options(selectinload(CreditGrant.credits))
        for grant in db.session.execute(grants).scalars():
            assert sum(c.allocated_minor for c in grant.credits) == grant.net_amount_minor
            for credit in grant.credits:
                e = first[credit.id]
                assert (e.kind, e.quantity, e.value_minor) == (
                    EntryKind.GRANT,
                    credit.quantity,
                    credit.allocated_minor,
                )
        # A series holds exactly its paid instalments' share: 1 facial and 10 units each.
        paid = (
            db.session.execute(
                sa.select(SeriesPurchase).where(SeriesPurchase.membership_id == self.series)
            )
            .scalar_one()
            .paid_count
        )
        granted = defaultdict(int)
        for credit in db.session.execute(
            sa.select(Credit).where(Credit.membership_id == self.series)
        ).scalars():
            granted[credit.treatment_id] += credit.quantity
        assert granted[self.treatments["facial"].id] == paid
        assert granted[self.treatments["botox"].id] == 10 * paid
        # A gift's conversions move value from its holding lot and create none: what its months
        # were granted is what the holding lot gave up, month for month.
        gift = db.session.execute(sa.select(Gift)).scalar_one()
        taken = db.session.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(LedgerEntry.quantity), 0),
                sa.func.coalesce(sa.func.sum(LedgerEntry.value_minor), 0),
            ).where(LedgerEntry.dedupe_key.like(f"convert:gift:{gift.code}:%"))
        ).one()
        months = (
            db.session.execute(
                sa.select(CreditGrant).where(
                    CreditGrant.source_ref.like(f"gift:{gift.code}:month:%")
                )
            )
            .scalars()
            .all()
        )
        assert -int(taken[0]) == len(months) == gift.months_converted
        assert -int(taken[1]) == sum(g.net_amount_minor for g in months)
        # No expired credit counts as redeemable.
        for lot in lots.values():
            if lot.expires_at <= self.now:
                assert not lot.is_live(self.now)
        # The service's live balance per treatment agrees with the raw oracle.
        for membership_id in self.memberships:
            live = [
                lot
                for lot in lots.values()
                if lot.credit.membership_id == membership_id and lot.is_live(self.now)
            ]
            oracle = self._live_by_treatment(membership_id)
            for treatment in self.treatments.values():
                service_view = sum(lot.remaining for lot in live if lot.covers(treatment.id))
                assert service_view == oracle[treatment.id]


def test_ledger_invariants_hold_under_random_operations(app, clock):
    LedgerMachine.clock, LedgerMachine.start = clock, clock()
    run_state_machine_as_test(LedgerMachine, settings=SETTINGS)


def test_a_refused_redemption_after_expiry_writes_nothing(app, clock):
    """The explicit case: an unexpired-looking balance that has in fact expired is refused."""
    t = f.treatment(price=10000)
    version = f.plan([(t, 2)], price=21800)
    m = f.active_membership(version, now=clock(), period_days=30)
    clock.advance(days=30)  # the moment the period ends, before any nightly run
    before = db.session.query(LedgerEntry).count()
    with pytest.raises(Conflict, match="0 sessions left, 1 asked"):
        ledger.redeem(
            membership_ids=[m.id],
            treatment=t,
            quantity=1,
            member_id=m.member_id,
            now=clock(),
            actor="desk",
        )
    db.session.rollback()
    assert db.session.query(LedgerEntry).count() == before
