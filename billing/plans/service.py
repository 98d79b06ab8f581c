"""The treatment catalogue: treatments, and plans in immutable versions.

A plan's price and contents are a PlanVersion that never changes once written: a new price or new
contents make a new version, and members stay on the version they joined on (grandfathered).
Names and descriptions are not terms of sale and are edited in place. Nothing is deleted: a
treatment or plan that is no longer sold is retired.

Every verb validates its whole input before it writes anything and commits once; a bad input is
an InvalidInput (422) naming the field, a clash with what exists a Conflict (409)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import marshmallow as ma
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from billing.errors import Conflict, DomainError, InvalidInput, NotFound
from billing.extensions import db
from billing.money import div_round_half_up
from billing.plans.models import (
    CountedIn,
    GrantMode,
    ItemKind,
    Plan,
    PlanItem,
    PlanItemOption,
    PlanKind,
    PlanVersion,
    Treatment,
    UnusedRule,
)
from billing.plans.schemas import (
    TERM_FIELDS,
    CatalogSchema,
    PlanInSchema,
    PlanPatchSchema,
    TreatmentInSchema,
    TreatmentPatchSchema,
    VersionRevisionSchema,
)

log = logging.getLogger(__name__)

Path = tuple[str | int, ...]
SCALAR_TERMS = tuple(name for name in TERM_FIELDS if name != "items")
TREATMENT_FIELDS = (
    "name",
    "category",
    "description",
    "list_price_minor",
    "currency",
    "tax_inclusive",
    "duration_minutes",
    "is_medical",
    "requires_consultation",
    "min_interval_days",
    "counted_in",
    "unit_label",
)


# ------------------------------------------------------------------------------ errors, input


def _path_text(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _nest(path: Path, leaf: Any) -> Any:
    for part in reversed(path):
        leaf = {part: leaf}
    return leaf


def _flatten(messages: Any, path: Path) -> list[str]:
    if isinstance(messages, dict):
        lines = []
        for key, value in messages.items():
            lines += _flatten(value, (*path, "" if key == "_schema" else key))
        return lines
    texts = messages if isinstance(messages, list) else [messages]
    where = _path_text(tuple(p for p in path if p != ""))
    return [f"{where}: {text}" if where else str(text) for text in texts]


def invalid(path: Path, message: str) -> InvalidInput:
    """An InvalidInput naming the field at `path` (e.g. ("items", 0, "treatment"))."""
    return InvalidInput(f"{_path_text(path)}: {message}", errors=_nest(path, [message]))


def _load(schema: ma.Schema, data: Any, path: Path = ()) -> dict:
    """Shape checks (types, ranges, unknown fields) as a domain error, whoever calls the verb."""
    try:
        return schema.load(data)
    except ma.ValidationError as exc:
        raise InvalidInput(
            ". ".join(_flatten(exc.messages, path)), errors=_nest(path, exc.messages)
        ) from None


def _commit() -> None:
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict(
            "Another change to the catalogue was saved at the same moment; nothing was "
            "saved. Reload and try again.",
            slug="concurrent-change",
        ) from None


# ------------------------------------------------------------------------------ treatments


def get_treatment(code: str) -> Treatment:
    treatment = _treatment_by_code(code)
    if treatment is None:
        raise NotFound(f"There is no treatment with code {code!r}.")
    return treatment


def list_treatments(*, include_retired: bool = False, category: str | None = None) -> list:
    query = db.select(Treatment).order_by(Treatment.id)
    if not include_retired:
        query = query.where(Treatment.retired_at.is_(None))
    if category:
        query = query.where(Treatment.category == category)
    return list(db.session.scalars(query))


def create_treatment(data: Mapping[str, Any], *, actor: str) -> Treatment:
    """A new treatment on the menu. Its code is permanent: plans and credits refer to it."""
    values = _load(TreatmentInSchema(), data)
    if _treatment_by_code(values["code"]) is not None:
        raise Conflict(
            f"A treatment with code {values['code']!r} exists already.",
            slug="duplicate-code",
            errors={"code": ["This code is taken."]},
        )
    treatment = _new_treatment(values)
    db.session.add(treatment)
    _commit()
    log.info("treatment %s created by %s", treatment.code, actor)
    return treatment


def update_treatment(code: str, changes: Mapping[str, Any], *, actor: str) -> Treatment:
    """Edit a treatment. Price edits apply to new sales; credits already granted keep theirs."""
    values = _load(TreatmentPatchSchema(), changes)
    treatment = get_treatment(code)
    _apply_treatment_changes(treatment, values, ())
    _commit()
    log.info("treatment %s updated by %s: %s", code, actor, sorted(values))
    return treatment


def retire_treatment(code: str, *, actor: str, now: datetime) -> Treatment:
    """Stop selling a treatment. Its history stays; a plan still selling it must be revised first."""
    treatment = get_treatment(code)
    if treatment.is_retired:
        return treatment
    _ensure_retirable(treatment, ())
    treatment.retired_at = now
    _commit()
    log.info("treatment %s retired by %s", code, actor)
    return treatment


def _treatment_by_code(code: str) -> Treatment | None:
    return db.session.scalar(db.select(Treatment).where(Treatment.code == code))


def _new_treatment(values: Mapping[str, Any]) -> Treatment:
    treatment = Treatment(code=values["code"])
    for name in TREATMENT_FIELDS:
        setattr(treatment, name, values[name])
    treatment.unit_label = _unit_label(values["counted_in"], values.get("unit_label"))
    return treatment


def _unit_label(counted_in: str, label: str | None) -> str:
    if counted_in == CountedIn.SESSION:
        return "session"
    return label if label not in (None, "session") else "unit"


def _treatment_changes(treatment: Treatment, values: Mapping[str, Any], path: Path) -> dict:
    """What would change, with the unit label kept consistent with how it is counted."""
    counted_in = values.get("counted_in", treatment.counted_in)
    label = values.get("unit_label", treatment.unit_label)
    if counted_in == CountedIn.SESSION and values.get("unit_label") not in (None, "session"):
        raise invalid(
            (*path, "unit_label"),
            "A treatment counted in sessions has no unit label; set counted_in: unit to count "
            "it in units.",
        )
    wanted = {name: values[name] for name in TREATMENT_FIELDS if name in values}
    wanted["unit_label"] = _unit_label(counted_in, label)
    changes = {k: v for k, v in wanted.items() if getattr(treatment, k) != v}
    for name in ("counted_in", "currency"):
        if name in changes and _plans_using(treatment):
            raise Conflict(
                f"{_path_text((*path, name)) or name}: {treatment.code!r} is in the plans "
                f"{', '.join(_plans_using(treatment))}; its {name} cannot change. Add a new "
                "treatment instead.",
                errors=_nest((*path, name), ["Cannot change: plans include this treatment."]),
            )
    return changes


def _apply_treatment_changes(treatment: Treatment, values: Mapping[str, Any], path: Path) -> bool:
    changes = _treatment_changes(treatment, values, path)
    for name, value in changes.items():
        setattr(treatment, name, value)
    return bool(changes)


def _plans_using(treatment: Treatment, *, selling_only: bool = False) -> list[str]:
    """Codes of plans with a version that includes the treatment (only versions on sale)."""
    direct = db.select(PlanItem.version_id).where(PlanItem.treatment_id == treatment.id)
    in_choice = (
        db.select(PlanItem.version_id)
        .join(PlanItemOption, PlanItemOption.item_id == PlanItem.id)
        .where(PlanItemOption.treatment_id == treatment.id)
    )
    query = (
        db.select(Plan)
        .join(PlanVersion, PlanVersion.plan_id == Plan.id)
        .where(PlanVersion.id.in_(direct.union(in_choice).scalar_subquery()))
        .distinct()
        .order_by(Plan.code)
    )
    plans = list(db.session.scalars(query))
    if selling_only:
        plans = [
            p
            for p in plans
            if not p.is_retired and treatment in _version_treatments(p.current_version)
        ]
    return [p.code for p in plans]


def _version_treatments(version: PlanVersion) -> list[Treatment]:
    return [t for item in version.items for t in item.treatments]


def _ensure_retirable(treatment: Treatment, path: Path) -> None:
    selling = _plans_using(treatment, selling_only=True)
    if selling:
        raise Conflict(
            f"{treatment.code!r} is included in the plans on sale {', '.join(selling)}; revise "
            "them (a new version without it) or retire them first.",
            slug="treatment-in-use",
            errors=_nest((*path, "retired") if path else ("code",), [f"In {', '.join(selling)}."]),
        )


# ------------------------------------------------------------------------------ plans


@dataclass
class VersionView:
    """A version as the API shows it: is it the one sold today, and who is still on it."""

    row: PlanVersion  # not `version`, which is the version's number
    is_current: bool
    member_count: int

    @property
    def grandfathered(self) -> bool:
        return not self.is_current and self.member_count > 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.row, name)


@dataclass
class PlanView:
    plan: Plan
    versions: list[VersionView]

    @property
    def current_version_number(self) -> int | None:
        current = self.plan.current_version
        return current.version if current else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.plan, name)


def get_plan(code: str) -> Plan:
    plan = db.session.scalar(db.select(Plan).where(Plan.code == code))
    if plan is None:
        raise NotFound(f"There is no plan with code {code!r}.")
    return plan


def list_plans(*, kind: str | None = None, include_retired: bool = False) -> list[PlanView]:
    query = (
        db.select(Plan)
        .order_by(Plan.id)
        .options(
            selectinload(Plan.versions)
            .selectinload(PlanVersion.items)
            .options(
                selectinload(PlanItem.treatment),
                selectinload(PlanItem.options).selectinload(PlanItemOption.treatment),
            )
        )
    )
    if kind:
        query = query.where(Plan.kind == kind)
    if not include_retired:
        query = query.where(Plan.retired_at.is_(None))
    return describe_plans(list(db.session.scalars(query)))


def show_plan(code: str) -> PlanView:
    return describe_plan(get_plan(code))


def describe_plan(plan: Plan) -> PlanView:
    return describe_plans([plan])[0]


def describe_plans(plans: list[Plan]) -> list[PlanView]:
    """Plans with each version's member count and whether it is current or grandfathered."""
    counts = member_counts([v.id for p in plans for v in p.versions])
    return [
        PlanView(
            plan,
            [VersionView(v, v is plan.current_version, counts.get(v.id, 0)) for v in plan.versions],
        )
        for plan in plans
    ]


def member_counts(version_ids: list[int]) -> dict[int, int]:
    """Memberships not canceled, per plan version (pending, active, past due, paused...)."""
    from billing.memberships.models import Membership, State

    if not version_ids:
        return {}
    rows = db.session.execute(
        db.select(Membership.plan_version_id, sa.func.count(Membership.id))
        .where(Membership.plan_version_id.in_(version_ids), Membership.state != State.CANCELED)
        .group_by(Membership.plan_version_id)
    )
    return {version_id: count for version_id, count in rows}


def create_plan(data: Mapping[str, Any], *, actor: str) -> Plan:
    """A new tier or series, with its version 1."""
    values = _load(PlanInSchema(), data)
    if _plan_by_code(values["code"]) is not None:
        raise Conflict(
            f"A plan with code {values['code']!r} exists already.",
            slug="duplicate-code",
            errors={"code": ["This code is taken."]},
        )
    plan = _create_plan(values, actor, ())
    _commit()
    log.info("plan %s created by %s", plan.code, actor)
    return plan


def revise_plan(code: str, changes: Mapping[str, Any], *, actor: str) -> PlanVersion:
    """A new version from the current one with `changes` (a new price, new contents...).

    Members stay on the version they joined on; new members join on this one."""
    values = _load(VersionRevisionSchema(), changes)
    plan = get_plan(code)
    if plan.is_retired:
        raise Conflict(f"The plan {code!r} is retired; it cannot be revised.", slug="retired")
    current = plan.current_version
    terms = {**terms_of(current), **values}
    resolved = _check_terms(plan.kind, terms, ())
    if _signature(terms, resolved) == _version_signature(current):
        raise Conflict(
            f"That is what version {current.version} already says: no new version was made.",
            slug="no-change",
        )
    version = _add_version(plan, terms, resolved, actor)
    _commit()
    log.info("plan %s version %s created by %s", code, version.version, actor)
    return version


def update_plan_details(code: str, changes: Mapping[str, Any], *, actor: str) -> Plan:
    """Rename or redescribe a plan: no new version, since what members bought is unchanged."""
    values = _load(PlanPatchSchema(), changes)
    plan = get_plan(code)
    for name, value in values.items():
        setattr(plan, name, value)
    _commit()
    log.info("plan %s details updated by %s", code, actor)
    return plan


def retire_plan(code: str, *, actor: str, now: datetime) -> Plan:
    """Stop selling a plan. Members on it keep their version until they leave or move."""
    plan = get_plan(code)
    if not plan.is_retired:
        plan.retired_at = now
        _commit()
        log.info("plan %s retired by %s", code, actor)
    return plan


def ssp_per_credit(item: PlanItem) -> int:
    """The standalone selling price of one credit of `item`, in the plan's currency.

    An explicit ssp_override_minor wins; otherwise a treatment's list price (per unit for unit
    treatments), or for a choice group the average of its options' list prices, rounded half up.
    Prices are as listed (tax-inclusive when the treatment is)."""
    if item.ssp_override_minor is not None:
        return item.ssp_override_minor
    if item.kind == ItemKind.CHOICE:
        prices = [option.treatment.list_price_minor for option in item.options]
        return div_round_half_up(sum(prices), len(prices))
    return item.treatment.list_price_minor


def _plan_by_code(code: str) -> Plan | None:
    return db.session.scalar(db.select(Plan).where(Plan.code == code))


def _create_plan(values: Mapping[str, Any], actor: str, path: Path) -> Plan:
    terms = {name: values[name] for name in TERM_FIELDS}
    resolved = _check_terms(values["kind"], terms, path)
    plan = Plan(
        code=values["code"],
        name=values["name"],
        description=values["description"],
        kind=values["kind"],
    )
    db.session.add(plan)
    _add_version(plan, terms, resolved, actor)
    return plan


@dataclass(frozen=True)
class _Resolved:
    """An included item with its treatments looked up and checked."""

    kind: str
    treatment: Treatment | None
    options: tuple[Treatment, ...]
    quantity: int
    label: str
    ssp_override_minor: int | None
    beneficiary_limit: int | None

    def signature(self) -> tuple:
        return (
            self.kind,
            self.treatment.id if self.treatment else None,
            tuple(sorted(t.id for t in self.options)),
            self.quantity,
            self.label,
            self.ssp_override_minor,
            self.beneficiary_limit,
        )


def _check_terms(kind: str, terms: Mapping[str, Any], path: Path) -> list[_Resolved]:
    """The rules a version must satisfy beyond its fields' shapes; raises on the first broken."""
    series = kind == PlanKind.SERIES
    if terms["unused_rule"] == UnusedRule.ROLLOVER:
        if series:
            raise invalid(
                (*path, "unused_rule"),
                "A series' credits last credit_validity_days; rollover is for tiers.",
            )
        if terms["rollover_max_periods"] < 1:
            raise invalid(
                (*path, "rollover_max_periods"),
                "With unused_rule rollover, say for how many periods (at least 1).",
            )
    else:
        for name in ("rollover_max_periods", "rollover_cap"):
            if terms[name]:
                raise invalid((*path, name), "Only with unused_rule: rollover.")
    if series:
        if terms["credit_validity_days"] is None:
            raise invalid(
                (*path, "credit_validity_days"), "A series says how many days its credits last."
            )
        if terms["grant_mode"] == GrantMode.PER_INSTALMENT and terms["instalments"] < 2:
            raise invalid((*path, "grant_mode"), "per_instalment needs instalments of 2 or more.")
    else:
        for name, neutral in (
            ("credit_validity_days", None),
            ("instalments", 1),
            ("grant_mode", GrantMode.UPFRONT),
        ):
            if terms[name] != neutral:
                raise invalid((*path, name), "Only for a series (kind: series).")
    items = terms["items"]
    if series and not items:
        raise invalid((*path, "items"), "A series must include at least one treatment session.")
    resolved = [_resolve_item(item, (*path, "items", i)) for i, item in enumerate(items)]
    seen: set[int] = set()
    for i, entry in enumerate(resolved):
        if entry.treatment is not None:
            if entry.treatment.id in seen:
                raise invalid(
                    (*path, "items", i, "treatment"),
                    f"{entry.treatment.code!r} is listed twice; give one item a larger quantity.",
                )
            seen.add(entry.treatment.id)
        others = [
            t.code
            for t in (entry.treatment, *entry.options)
            if t and t.currency != terms["currency"]
        ]
        if others:
            raise invalid(
                (*path, "currency"),
                f"The plan is priced in {terms['currency']} but {', '.join(others)} "
                f"{'is' if len(others) == 1 else 'are'} priced in another currency.",
            )
        per_instalment = series and terms["grant_mode"] == GrantMode.PER_INSTALMENT
        if per_instalment and entry.quantity % terms["instalments"]:
            raise invalid(
                (*path, "items", i, _quantity_key(items[i])),
                f"Granted per instalment, {entry.quantity} must divide evenly into "
                f"{terms['instalments']} instalments.",
            )
    return resolved


def _quantity_key(item: Mapping[str, Any]) -> str:
    return next(k for k in ("sessions", "units", "quantity") if k in item)


def _resolve_item(item: Mapping[str, Any], path: Path) -> _Resolved:
    key = _quantity_key(item)
    quantity = item[key]
    if "choice" in item:
        options = tuple(
            _usable_treatment(code, (*path, "choice", j)) for j, code in enumerate(item["choice"])
        )
        if len({(t.counted_in, t.unit_label) for t in options}) > 1:
            raise invalid(
                (*path, "choice"), "The options of a choice are all counted the same way."
            )
        counted = options[0]
        treatment = None
    else:
        treatment = counted = _usable_treatment(item["treatment"], (*path, "treatment"))
        options = ()
    if key == "units" and not counted.in_units:
        raise invalid(
            (*path, "units"),
            f"{counted.code!r} is counted in sessions; give sessions: {quantity}.",
        )
    if key == "sessions" and counted.in_units:
        raise invalid(
            (*path, "sessions"),
            f"{counted.code!r} is counted in {counted.unit_label}s; give units: N.",
        )
    limit = item.get("beneficiary_limit")
    if limit is not None and limit > quantity:
        raise invalid((*path, "beneficiary_limit"), f"At most the quantity ({quantity}).")
    return _Resolved(
        kind=ItemKind.CHOICE if options else ItemKind.TREATMENT,
        treatment=treatment,
        options=options,
        quantity=quantity,
        label=item.get("label", ""),
        ssp_override_minor=item.get("ssp_override_minor"),
        beneficiary_limit=limit,
    )


def _usable_treatment(code: str, path: Path) -> Treatment:
    treatment = _treatment_by_code(code)
    if treatment is None:
        raise invalid(path, f"There is no treatment with code {code!r}.")
    if treatment.is_retired:
        raise invalid(path, f"The treatment {code!r} is retired.")
    return treatment


def _add_version(
    plan: Plan, terms: Mapping[str, Any], resolved: list[_Resolved], actor: str
) -> PlanVersion:
    current = plan.current_version
    version = PlanVersion(version=current.version + 1 if current else 1, created_by=actor)
    for name in SCALAR_TERMS:
        setattr(version, name, terms[name])
    for position, entry in enumerate(resolved):
        item = PlanItem(
            position=position,
            kind=entry.kind,
            treatment=entry.treatment,
            label=entry.label,
            quantity=entry.quantity,
            ssp_override_minor=entry.ssp_override_minor,
            beneficiary_limit=entry.beneficiary_limit,
        )
        item.options = [PlanItemOption(treatment=t) for t in entry.options]
        version.items.append(item)
    plan.versions.append(version)
    return version


def terms_of(version: PlanVersion) -> dict[str, Any]:
    """A version's terms in the input shape (items name treatments by code)."""
    terms: dict[str, Any] = {name: getattr(version, name) for name in SCALAR_TERMS}
    terms["items"] = [_item_input(item) for item in version.items]
    return terms


def _item_input(item: PlanItem) -> dict[str, Any]:
    counted = item.treatments[0]
    out: dict[str, Any] = (
        {"choice": [option.treatment.code for option in item.options]}
        if item.kind == ItemKind.CHOICE
        else {"treatment": item.treatment.code}
    )
    out["units" if counted.in_units else "sessions"] = item.quantity
    if item.label:
        out["label"] = item.label
    if item.ssp_override_minor is not None:
        out["ssp_override_minor"] = item.ssp_override_minor
    if item.beneficiary_limit is not None:
        out["beneficiary_limit"] = item.beneficiary_limit
    return out


def _signature(terms: Mapping[str, Any], resolved: list[_Resolved]) -> tuple:
    return (
        tuple(terms[name] for name in SCALAR_TERMS),
        tuple(entry.signature() for entry in resolved),
    )


def _version_signature(version: PlanVersion) -> tuple:
    items = tuple(
        (
            item.kind,
            item.treatment_id,
            tuple(sorted(option.treatment_id for option in item.options)),
            item.quantity,
            item.label,
            item.ssp_override_minor,
            item.beneficiary_limit,
        )
        for item in version.items
    )
    return tuple(getattr(version, name) for name in SCALAR_TERMS), items


# ------------------------------------------------------------------------------ the catalogue


@dataclass
class CatalogSummary:
    """What a catalogue load did (or, on a dry run, would do), by code."""

    treatments: dict[str, list[str]] = field(default_factory=dict)
    plans: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, outcome: str, code: str) -> None:
        getattr(self, kind).setdefault(outcome, []).append(code)

    @property
    def changed(self) -> bool:
        return any(
            codes
            for outcomes in (self.treatments, self.plans)
            for outcome, codes in outcomes.items()
            if outcome not in ("unchanged", "left retired")
        )

    def lines(self) -> list[str]:
        lines = []
        for kind in ("treatments", "plans"):
            outcomes = getattr(self, kind)
            counts = ", ".join(f"{len(codes)} {outcome}" for outcome, codes in outcomes.items())
            lines.append(f"{kind}: {counts or 'none'}")
            for outcome, codes in outcomes.items():
                if outcome != "unchanged":
                    lines.append(f"  {outcome}: {', '.join(codes)}")
        return lines


def load_catalog(
    data: Mapping[str, Any], *, actor: str, now: datetime, dry_run: bool = False
) -> CatalogSummary:
    """Bring the catalogue to what `data` says, all or nothing.

    Codes not in the database are created; a treatment whose fields differ is updated; a plan
    whose price or contents differ gets a new version (its name and description are edited in
    place). Loading the same data again changes nothing. What the data does not mention is left
    alone, and a retired treatment or plan stays retired. Money is in minor units here; the YAML
    file's major-unit strings are converted by billing.plans.catalog_file."""
    catalog = _load(CatalogSchema(), data)
    _refuse_duplicate_codes(catalog)
    try:
        summary = _apply_catalog(catalog, actor, now)
    except DomainError:
        db.session.rollback()
        raise
    if dry_run:
        db.session.rollback()
    else:
        _commit()
        log.info("catalogue loaded by %s: %s", actor, "; ".join(summary.lines()))
    return summary


def _refuse_duplicate_codes(catalog: Mapping[str, Any]) -> None:
    for kind in ("treatments", "plans"):
        seen: dict[str, int] = {}
        for i, entry in enumerate(catalog[kind]):
            if entry["code"] in seen:
                raise invalid(
                    (kind, i, "code"),
                    f"{entry['code']!r} is listed twice (also at {kind}[{seen[entry['code']]}]).",
                )
            seen[entry["code"]] = i


def _apply_catalog(catalog: Mapping[str, Any], actor: str, now: datetime) -> CatalogSummary:
    summary = CatalogSummary()
    to_retire: list[tuple[Treatment, Path]] = []
    for i, values in enumerate(catalog["treatments"]):
        path: Path = ("treatments", i)
        treatment = _treatment_by_code(values["code"])
        if treatment is None:
            treatment = _new_treatment(values)
            if values["retired"]:
                treatment.retired_at = now
            db.session.add(treatment)
            summary.note("treatments", "created", treatment.code)
        elif treatment.is_retired:
            summary.note(
                "treatments", "unchanged" if values["retired"] else "left retired", treatment.code
            )
        else:
            updated = _apply_treatment_changes(treatment, values, path)
            if values["retired"]:
                to_retire.append((treatment, path))
            else:
                summary.note("treatments", "updated" if updated else "unchanged", treatment.code)
    db.session.flush()
    for j, values in enumerate(catalog["plans"]):
        path = ("plans", j)
        code = values["code"]
        plan = _plan_by_code(code)
        if plan is None:
            plan = _create_plan(values, actor, path)
            if values["retired"]:
                plan.retired_at = now
            summary.note("plans", "created", code)
            continue
        if plan.is_retired:
            summary.note("plans", "unchanged" if values["retired"] else "left retired", code)
            continue
        if values["kind"] != plan.kind:
            raise invalid(
                (*path, "kind"), f"{code!r} is a {plan.kind}; a plan's kind cannot change."
            )
        outcome, label = "unchanged", code
        if (values["name"], values["description"]) != (plan.name, plan.description):
            plan.name, plan.description = values["name"], values["description"]
            outcome = "updated"
        terms = {name: values[name] for name in TERM_FIELDS}
        resolved = _check_terms(plan.kind, terms, path)
        if _signature(terms, resolved) != _version_signature(plan.current_version):
            version = _add_version(plan, terms, resolved, actor)
            outcome, label = "new version", f"{code} (v{version.version})"
        if values["retired"]:
            plan.retired_at = now
            outcome = "retired"
        summary.note("plans", outcome, label)
    db.session.flush()
    for treatment, path in to_retire:
        _ensure_retirable(treatment, path)
        treatment.retired_at = now
        summary.note("treatments", "retired", treatment.code)
    return summary


def export_catalog() -> dict[str, Any]:
    """Every treatment and plan (its current version) in load_catalog's shape: export then load
    changes nothing."""
    treatments = db.session.scalars(db.select(Treatment).order_by(Treatment.id))
    plans = db.session.scalars(db.select(Plan).order_by(Plan.id))
    return {
        "treatments": [_export_treatment(t) for t in treatments],
        "plans": [_export_plan(p) for p in plans],
    }


def _export_treatment(treatment: Treatment) -> dict[str, Any]:
    out: dict[str, Any] = {"code": treatment.code}
    out.update({name: getattr(treatment, name) for name in TREATMENT_FIELDS})
    if not treatment.in_units:
        del out["unit_label"]
    if treatment.is_retired:
        out["retired"] = True
    return out


_SERIES_ONLY = {"credit_validity_days", "instalments", "grant_mode"}
_ROLLOVER_ONLY = {"rollover_max_periods", "rollover_cap"}


def _export_plan(plan: Plan) -> dict[str, Any]:
    terms = terms_of(plan.current_version)
    out: dict[str, Any] = {
        "code": plan.code,
        "kind": plan.kind,
        "name": plan.name,
        "description": plan.description,
    }
    for name in SCALAR_TERMS:
        value = terms[name]
        if value is None:
            continue
        if name in _SERIES_ONLY and not plan.is_series:
            continue
        if name in _ROLLOVER_ONLY and terms["unused_rule"] != UnusedRule.ROLLOVER:
            continue
        out[name] = value
    out["items"] = terms["items"]
    if plan.is_retired:
        out["retired"] = True
    return out
