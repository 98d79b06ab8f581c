"""Import every model so that the metadata (Alembic, tests) sees the whole schema."""

from billing.auth.models import ApiKey, IdempotencyRecord  # noqa: F401
from billing.checkout.models import (  # noqa: F401
    Consultation,
    RuleOverride,
    Visit,
    VisitLine,
)
from billing.clinic.models import Location  # noqa: F401
from billing.entitlements.models import Credit, CreditGrant, LedgerEntry  # noqa: F401
from billing.gifts.models import Gift  # noqa: F401
from billing.jobs.models import JobRun, Notification  # noqa: F401
from billing.members.models import Member  # noqa: F401
from billing.memberships.models import Beneficiary, Membership, MembershipEvent  # noqa: F401
from billing.payments.models import Invoice, Payment, Receivable  # noqa: F401
from billing.plans.models import Plan, PlanItem, PlanItemOption, PlanVersion, Treatment  # noqa: F401
from billing.series.models import SeriesInstalment, SeriesPurchase  # noqa: F401
from billing.staff.models import CategoryPolicy, Credential, DutyShift, Staff  # noqa: F401
from billing.stripe_sync.models import BillingProfile, StripeEvent  # noqa: F401
from billing.web.models import User  # noqa: F401
