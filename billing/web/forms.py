"""The pages' forms: every field has a label, every form a CSRF token (Flask-WTF)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateField,
    EmailField,
    IntegerField,
    PasswordField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional

from billing.money import exponent

try:  # WTForms 3.3 declares options as SelectChoice (tuples are deprecated there)
    from wtforms.fields.choices import SelectChoice
except ImportError:  # pragma: no cover - older WTForms
    SelectChoice = None


def choices(pairs) -> list:
    """[(value, label), ...] in the shape this WTForms wants."""
    if SelectChoice is None:  # pragma: no cover
        return [(value, label) for value, label in pairs]
    return [SelectChoice(value=value, label=label) for value, label in pairs]


def parse_major(text: str | None, currency: str) -> int:
    """'388.00' (or '388', 'S$ 1,388.5') in `currency` -> minor units, exactly; ValueError if not."""
    cleaned = re.sub(r"[^\d.\-]", "", text or "")
    if not cleaned or cleaned.count(".") > 1:
        raise ValueError("Give an amount like 388.00.")
    try:
        amount = Decimal(cleaned)
    except InvalidOperation:
        raise ValueError("Give an amount like 388.00.") from None
    exp = exponent(currency)
    minor = amount.scaleb(exp)
    if minor != minor.to_integral_value():
        raise ValueError(f"{currency} has {exp} decimal places: give at most {exp}.")
    if minor < 0:
        raise ValueError("The amount cannot be negative.")
    return int(minor)


class PasswordSignInForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=200)])


class RequestCodeForm(FlaskForm):
    email = EmailField("Your email", validators=[DataRequired(), Length(max=254)])


class CodeForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    code = StringField("Six-digit code", validators=[DataRequired(), Length(min=6, max=12)])


class ActionForm(FlaskForm):
    """A button that changes something: only the CSRF token."""


class AddLineForm(FlaskForm):
    treatment_id = SelectField("Treatment", coerce=int, validators=[InputRequired()])
    provider_id = SelectField("Provider", coerce=int, validators=[InputRequired()])
    quantity = IntegerField(
        "Quantity", default=1, validators=[InputRequired(), NumberRange(min=1, max=10_000)]
    )


class VoidLineForm(FlaskForm):
    reason = StringField("Reason", validators=[DataRequired(), Length(max=500)])


class PauseForm(FlaskForm):
    resume_on = DateField("Resume on (optional)", validators=[Optional()])
    reason = StringField("Reason (optional)", validators=[Optional(), Length(max=500)])


class CancelForm(FlaskForm):
    when = SelectField(
        "When",
        choices=choices(
            [
                ("period_end", "At the end of the period I have paid for"),
                ("now", "Now (unused treatments are forfeited)"),
            ]
        ),
        default="period_end",
    )
    reason = StringField("Reason (optional)", validators=[Optional(), Length(max=500)])


class DateRangeForm(FlaskForm):
    class Meta:
        csrf = False  # a GET form: it changes nothing

    start = DateField("From", validators=[DataRequired()])
    end = DateField("To (inclusive)", validators=[DataRequired()])


class TreatmentForm(FlaskForm):
    code = StringField("Code", validators=[DataRequired(), Length(max=64)])
    name = StringField("Name", validators=[DataRequired(), Length(max=200)])
    category = SelectField("Category")
    description = TextAreaField("Description", validators=[Optional(), Length(max=2000)])
    list_price = StringField("List price", validators=[DataRequired()])
    duration_minutes = IntegerField(
        "Duration (minutes)", default=60, validators=[InputRequired(), NumberRange(1, 1440)]
    )
    min_interval_days = IntegerField(
        "Days between sessions", default=0, validators=[InputRequired(), NumberRange(0, 3650)]
    )
    is_medical = BooleanField("Medical: a licensed provider only")
    requires_consultation = BooleanField("Needs a consultation first")


class TierForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=200)])
    description = TextAreaField("Description", validators=[Optional(), Length(max=2000)])
    price = StringField("Price per period", validators=[DataRequired()])
    min_commitment_periods = IntegerField(
        "Minimum commitment (paid periods)", validators=[InputRequired(), NumberRange(0, 120)]
    )
    member_discount_percent = StringField(
        "Member discount on other treatments (%)", validators=[InputRequired()]
    )
