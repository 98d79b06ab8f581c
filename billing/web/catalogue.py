"""The catalogue pages (admin): treatments and tiers.

Every save goes through billing.plans.service: a change to a tier's price or contents makes a new
version, and the members on the old one stay on it; the page says how many."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from flask import current_app, flash, redirect, render_template, request, url_for

from billing import clock
from billing.auth.access import current_principal, requires
from billing.errors import DomainError
from billing.plans import service as plans
from billing.plans.models import Category, PlanKind
from billing.web import web_blueprint
from billing.web.forms import TierForm, TreatmentForm, choices, parse_major

bp = web_blueprint("web_catalogue", __name__, url_prefix="/catalogue")

CATEGORY_WORDS = {c.value: c.value.replace("_", " ").capitalize() for c in Category}


def _actor() -> str:
    return current_principal().actor


def _show_errors(form, error: DomainError, names: dict[str, str]) -> None:
    """Put a service's field errors next to the fields they name; the rest on top."""
    placed = False
    for key, messages in (error.errors or {}).items():
        field = getattr(form, names.get(key, key), None)
        if field is not None and isinstance(messages, list):
            field.errors = [*field.errors, *[str(m) for m in messages]]
            placed = True
    if not placed:
        flash(error.detail, "error")


@bp.get("")
@requires("admin")
def index():
    tiers = plans.list_plans(include_retired=False)
    treatments = plans.list_treatments(include_retired=False)
    return render_template(
        "catalogue/index.html",
        tiers=tiers,
        treatments=treatments,
        categories=CATEGORY_WORDS,
    )


# ------------------------------------------------------------------------------ treatments

TREATMENT_FIELD_NAMES = {"list_price_minor": "list_price"}


def _treatment_form(obj=None) -> TreatmentForm:
    form = TreatmentForm()
    form.category.choices = choices(CATEGORY_WORDS.items())
    if obj is not None and request.method == "GET":
        form.code.data = obj.code
        form.name.data = obj.name
        form.category.data = obj.category
        form.description.data = obj.description
        form.list_price.data = _major(obj.list_price_minor, obj.currency)
        form.duration_minutes.data = obj.duration_minutes
        form.min_interval_days.data = obj.min_interval_days
        form.is_medical.data = obj.is_medical
        form.requires_consultation.data = obj.requires_consultation
    return form


def _major(amount_minor: int, currency: str) -> str:
    from billing.money import to_major_str

    return to_major_str(amount_minor, currency)


def _treatment_values(form: TreatmentForm, currency: str) -> dict | None:
    try:
        price = parse_major(form.list_price.data, currency)
    except ValueError as exc:
        form.list_price.errors = [*form.list_price.errors, str(exc)]
        return None
    return {
        "name": form.name.data.strip(),
        "category": form.category.data,
        "description": (form.description.data or "").strip(),
        "list_price_minor": price,
        "duration_minutes": form.duration_minutes.data,
        "min_interval_days": form.min_interval_days.data,
        "is_medical": bool(form.is_medical.data),
        "requires_consultation": bool(form.requires_consultation.data),
    }


@bp.route("/treatments/new", methods=["GET", "POST"])
@requires("admin")
def new_treatment():
    form = _treatment_form()
    currency = current_app.config.get("CLINIC_CURRENCY", "SGD")
    status = 200
    if form.validate_on_submit():
        values = _treatment_values(form, currency)
        if values is not None:
            values.update(code=form.code.data.strip(), currency=currency)
            try:
                treatment = plans.create_treatment(values, actor=_actor())
            except DomainError as exc:
                _show_errors(form, exc, TREATMENT_FIELD_NAMES)
            else:
                flash(f"{treatment.name} is on the menu.", "success")
                return redirect(url_for("web_catalogue.index"))
        status = 422
    elif request.method == "POST":
        status = 422
    return render_template(
        "catalogue/treatment.html", form=form, treatment=None, currency=currency
    ), status


@bp.route("/treatments/<code>", methods=["GET", "POST"])
@requires("admin")
def edit_treatment(code: str):
    treatment = plans.get_treatment(code)
    form = _treatment_form(treatment)
    form.code.data = treatment.code  # the code never changes
    status = 200
    if form.validate_on_submit():
        values = _treatment_values(form, treatment.currency)
        if values is not None:
            try:
                plans.update_treatment(code, values, actor=_actor())
            except DomainError as exc:
                _show_errors(form, exc, TREATMENT_FIELD_NAMES)
            else:
                flash(
                    f"{treatment.name} saved. A new price applies to new sales; credits already "
                    "granted keep their value.",
                    "success",
                )
                return redirect(url_for("web_catalogue.index"))
        status = 422
    elif request.method == "POST":
        status = 422
    return render_template(
        "catalogue/treatment.html", form=form, treatment=treatment, currency=treatment.currency
    ), status


# ------------------------------------------------------------------------------ tiers


def _percent_to_bp(text: str | None) -> int:
    try:
        value = Decimal((text or "0").strip().rstrip("%") or "0")
    except InvalidOperation:
        raise ValueError("Give a percentage like 10 or 12.5.") from None
    bp_value = value * 100
    if bp_value != bp_value.to_integral_value() or not 0 <= bp_value <= 10_000:
        raise ValueError("Give a percentage between 0 and 100, at most two decimals.")
    return int(bp_value)


def _items_from_request(version, treatments_by_code) -> tuple[list[dict], list[str]]:
    """The tier's items as posted: each current item's new quantity (0 drops it), plus one new."""
    items, problems = [], []
    for index, item in enumerate(plans.terms_of(version)["items"]):
        raw = request.form.get(f"item-{index}", "").strip()
        try:
            quantity = int(raw)
        except ValueError:
            problems.append(f"Line {index + 1}: give a whole number (0 removes it).")
            continue
        if quantity < 0:
            problems.append(f"Line {index + 1}: the quantity cannot be negative.")
        elif quantity:
            key = "units" if "units" in item else "sessions"
            item = {k: v for k, v in item.items() if k not in ("units", "sessions", "quantity")}
            item[key] = quantity
            items.append(item)
    new_code = request.form.get("new_treatment", "").strip()
    new_qty = request.form.get("new_quantity", "").strip()
    if new_code:
        treatment = treatments_by_code.get(new_code)
        try:
            quantity = int(new_qty or "1")
        except ValueError:
            quantity = 0
        if treatment is None:
            problems.append("Choose a treatment to add.")
        elif quantity < 1:
            problems.append("Give how many of the new treatment the tier includes.")
        else:
            items.append(
                {"treatment": new_code, ("units" if treatment.in_units else "sessions"): quantity}
            )
    return items, problems


@bp.route("/plans/<code>", methods=["GET", "POST"])
@requires("admin")
def edit_plan(code: str):
    view = plans.show_plan(code)
    plan = view.plan
    version = plan.current_version
    form = TierForm()
    treatments = plans.list_treatments()
    by_code = {t.code: t for t in treatments}
    if request.method == "GET":
        form.name.data = plan.name
        form.description.data = plan.description
        form.price.data = _major(version.price_minor, version.currency)
        form.min_commitment_periods.data = version.min_commitment_periods
        form.member_discount_percent.data = str(Decimal(version.member_discount_bp) / 100)
    status = 200
    if form.validate_on_submit():
        problems = []
        try:
            price = parse_major(form.price.data, version.currency)
        except ValueError as exc:
            form.price.errors = [*form.price.errors, str(exc)]
            price = None
        try:
            discount = _percent_to_bp(form.member_discount_percent.data)
        except ValueError as exc:
            form.member_discount_percent.errors = [*form.member_discount_percent.errors, str(exc)]
            discount = None
        items, problems = _items_from_request(version, by_code)
        for problem in problems:
            flash(problem, "error")
        if price is not None and discount is not None and not problems:
            outcome = _save_plan(plan, version, form, price, discount, items)
            if outcome is not None:
                flash(outcome, "success")
                return redirect(url_for("web_catalogue.edit_plan", code=code))
        status = 422
    elif request.method == "POST":
        status = 422
    return render_template(
        "catalogue/plan.html",
        form=form,
        view=plans.show_plan(code),
        version=version,
        items=list(zip(version.items, plans.terms_of(version)["items"], strict=True)),
        treatments=treatments,
        is_tier=plan.kind == PlanKind.TIER,
    ), status


def _save_plan(plan, version, form, price, discount, items) -> str | None:
    """Name and description in place; price and contents as a new version. Returns what to say."""
    said = []
    details = {}
    if form.name.data.strip() != plan.name:
        details["name"] = form.name.data.strip()
    if (form.description.data or "").strip() != (plan.description or ""):
        details["description"] = (form.description.data or "").strip()
    terms = {}
    if price != version.price_minor:
        terms["price_minor"] = price
    if form.min_commitment_periods.data != version.min_commitment_periods:
        terms["min_commitment_periods"] = form.min_commitment_periods.data
    if discount != version.member_discount_bp:
        terms["member_discount_bp"] = discount
    if items != plans.terms_of(version)["items"]:
        terms["items"] = items
    if not details and not terms:
        return "Nothing changed."
    try:
        if details:
            plans.update_plan_details(plan.code, details, actor=_actor())
            said.append("Name and description saved.")
        if terms:
            staying = plans.member_counts([version.id]).get(version.id, 0)
            new_version = plans.revise_plan(plan.code, terms, actor=_actor())
            said.append(
                f"Saved as version {new_version.version}: new members join it. "
                f"{staying} member{' stays' if staying == 1 else 's stay'} on version "
                f"{version.version}, with the price and treatments they signed up for."
            )
    except DomainError as exc:
        from billing.extensions import db

        db.session.rollback()
        _show_errors(form, exc, {"price_minor": "price"})
        return None
    return " ".join(said)


@bp.post("/plans/<code>/retire")
@requires("admin")
def retire_plan(code: str):
    plan = plans.retire_plan(code, actor=_actor(), now=clock.now())
    flash(f"{plan.name} is no longer sold. Its members keep their version.", "success")
    return redirect(url_for("web_catalogue.index"))
