"""The Quota resource (``kmeter.io/v1alpha1``): a usage limit per subject on one Meter.

The model is the single source of the CRD ``quotas.kmeter.io`` (see :mod:`.crd` and the notes
in :mod:`.base`); it also validates manifests for ``kmeter dev``.

Design decisions, each documented for users in ``docs/resources.md``:

* **limit is a JSON number** (``type: number``, greater than 0), read in Python as an exact
  :class:`~decimal.Decimal` through :func:`kmeter.core.decimals.to_decimal`. The API server
  stores a non-integer number as a float64 and writes it back in its shortest form, so any
  limit of up to 15 significant digits (``12.5``, ``1000000.01``) comes back as written and is
  compared exactly; integers stay exact up to 2**63. A string form (int-or-string) would carry
  more digits, but ``x-kubernetes-int-or-string`` refuses a plain ``12.5``, which is worse for
  the people writing limits than 15 digits are for the numbers they write. Strings are refused
  in Python too, as the API server refuses them. Limits beyond kmeter's exact range
  (:mod:`kmeter.core.decimals`: 30 integer digits, 18 decimal places) are refused by Python;
  the API server lets through numbers that are far beyond any real limit, such as 1e40.
* **timeZone** is checked for form only (:data:`TIME_ZONE_PATTERN`): CEL has no time zone
  database. An unknown but well-formed name (``Mars/Base``) is accepted here and reported by
  the operator in a condition (it resolves zones with :func:`kmeter.core.windows.time_zone`).
* **subjects** defaults to ``{all: true}`` (a limit per subject, for every subject) rather
  than ``all`` defaulting to true: with that default, ``subjects: {names: [a]}`` would read as
  "all and a" and need ``all: false`` spelled out. A rule requires exactly one of ``all: true``
  or a non-empty ``names``.
* **overrides** is a list-map keyed by ``subject``: the API server refuses a subject listed
  twice, and server-side apply merges entries by subject. An override also brings its subject
  under the quota when ``subjects.names`` does not list it.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, PlainSerializer, WithJsonSchema
from pydantic.functional_validators import PlainValidator
from pydantic_core import PydanticCustomError

from kmeter.core.decimals import to_decimal
from kmeter.resources.base import (
    API_VERSION,
    DNS_SUBDOMAIN_PATTERN,
    KubeModel,
    ObjectMeta,
    Rule,
    UniqueList,
    cel_string,
    fullmatch,
)
from kmeter.resources.meter import MAX_GROUP_BY, group_keys_rule
from kmeter.resources.status import QuotaStatus
from kmeter.topics import MAX_METER_NAME_LENGTH

TIME_ZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"
"""The form of an IANA time zone name (``UTC``, ``Europe/Paris``, ``Etc/GMT+5``)."""
RATE_PERIOD_PATTERN = r"^[1-9][0-9]{0,5}(s|m|h)$"
"""A rate limit's ``per``: a whole number of seconds, minutes or hours (``1s``, ``15m``)."""
WEBHOOK_URL_PATTERN = r"^https?://[^ \t\r\n/?#@]+([/?#][^ \t\r\n]*)?$"
"""An http(s) URL without credentials (``user@``) or spaces."""
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
"""A key of a Secret's data."""
MAX_SUBJECTS = 1000
"""Most entries of ``subjects.names`` and of ``overrides``."""
MAX_SUBJECT_LENGTH = 256
_SECONDS = {"s": 1, "m": 60, "h": 3600}


def _number(value: Any) -> Decimal:
    if isinstance(value, bool | str):
        raise PydanticCustomError(
            "kmeter_number", "must be of type number, such as 100000 or 12.5 (not a string)"
        )
    try:
        number = to_decimal(value)
    except ValueError as error:
        raise PydanticCustomError("kmeter_number", "{reason}", {"reason": str(error)}) from None
    if number <= 0:
        raise PydanticCustomError("kmeter_number", "Input should be greater than 0")
    return number


def _json_number(value: Decimal) -> int | float:
    integral = value == value.to_integral_value()
    return int(value) if integral else float(value)


Limit = Annotated[
    Decimal,
    PlainValidator(_number, json_schema_input_type=float),
    PlainSerializer(_json_number, when_used="json"),
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0}),
]
"""A positive number, exact in Python (a Decimal), a JSON number in manifests."""


def _named(field: str, what: str) -> Rule:
    return Rule(
        rule=f"self.matches({cel_string(DNS_SUBDOMAIN_PATTERN)})",
        message=(
            f"{field} must be the name of a {what}: lowercase letters, digits, - and ., "
            "starting and ending with a letter or digit"
        ),
        check=fullmatch(DNS_SUBDOMAIN_PATTERN),
    )


def _matches(field: str, pattern: str, what: str) -> Rule:
    return Rule(
        rule=f"self.matches({cel_string(pattern)})",
        message=f"{field} must be {what}",
        check=fullmatch(pattern),
    )


class MeterRef(KubeModel):
    """The Meter this quota limits, in the quota's own namespace."""

    name: Annotated[
        str,
        Field(min_length=1, max_length=MAX_METER_NAME_LENGTH),
        _named("spec.meterRef.name", "Meter"),
    ] = Field(description="The Meter's name. A Quota can only refer to a Meter of its namespace.")


class PeriodUnit(StrEnum):
    """The length of a quota period."""

    HOUR = "HOUR"
    DAY = "DAY"
    MONTH = "MONTH"


class Period(KubeModel):
    """When usage resets: calendar hours, days or months in a time zone."""

    every: PeriodUnit = Field(
        description=(
            "The period usage is limited over: HOUR, DAY or MONTH. Periods are calendar "
            "periods in timeZone (a MONTH runs from the 1st at 00:00 to the next 1st)."
        ),
    )
    time_zone: Annotated[
        str,
        Field(max_length=64),
        _matches(
            "spec.period.timeZone",
            TIME_ZONE_PATTERN,
            "an IANA time zone name such as UTC, Europe/Paris or America/New_York",
        ),
    ] = Field(
        default="UTC",
        description=(
            "The IANA time zone periods start in (default UTC), such as Europe/Paris. "
            "The API server checks the form only; the operator reports an unknown zone in "
            "the Quota's conditions."
        ),
    )


SubjectName = Annotated[str, Field(min_length=1, max_length=MAX_SUBJECT_LENGTH)]


class Subjects(KubeModel):
    """Which subjects the limit applies to, each on its own: all of them, or those named."""

    all: bool | None = Field(
        default=None,
        description=(
            "true: every subject gets the limit, each on its own (the default when subjects "
            "is not set). Set either all: true or names."
        ),
    )
    names: Annotated[list[SubjectName], Field(max_length=MAX_SUBJECTS), UniqueList()] | None = (
        Field(
            default=None,
            description=(
                f"Only these subjects get the limit, each on its own (at most {MAX_SUBJECTS}, "
                "no duplicates). Set either all: true or names."
            ),
        )
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            rule="(has(self.all) && self.all) != (has(self.names) && size(self.names) > 0)",
            message="spec.subjects must set exactly one of all: true and a non-empty names list",
            check=lambda subjects: bool(subjects.all) != bool(subjects.names),
        ),
    )


class Override(KubeModel):
    """A different limit for one subject."""

    subject: SubjectName = Field(description="The subject (customer) this limit is for.")
    limit: Limit = Field(
        description="The subject's limit, replacing spec.limit for it; a number greater than 0."
    )


class Enforcement(StrEnum):
    """What happens when a subject reaches its limit."""

    BLOCK = "Block"
    NOTIFY = "Notify"


class RateLimit(KubeModel):
    """A request rate limit per subject, enforced by the sidecars of the namespace."""

    requests: int = Field(
        ge=1, le=10**9, description="How many requests a subject may make per period `per`."
    )
    per: Annotated[
        str,
        Field(max_length=8),
        _matches(
            "spec.rateLimit.per",
            RATE_PERIOD_PATTERN,
            "a whole number of seconds, minutes or hours, such as 1s, 30s, 1m or 1h",
        ),
    ] = Field(description="The period of the rate, such as 1s, 1m or 1h.")
    burst: int | None = Field(
        default=None,
        ge=1,
        le=10**9,
        description=(
            "How many requests a subject may make at once after being idle (a token bucket's "
            "size); at least requests. Default: requests."
        ),
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            rule="!has(self.burst) || self.burst >= self.requests",
            message=(
                "spec.rateLimit.burst must be at least spec.rateLimit.requests: a smaller burst "
                "would refuse requests the rate allows"
            ),
            check=lambda rate: rate.burst is None or rate.burst >= rate.requests,
            field_path=".burst",
        ),
    )

    @property
    def per_seconds(self) -> int:
        """``per`` in seconds."""
        return int(self.per[:-1]) * _SECONDS[self.per[-1]]


class SecretKeyRef(KubeModel):
    """A key of a Secret in the quota's namespace."""

    name: Annotated[str, Field(max_length=253), _named("spec.webhook.secretRef.name", "Secret")] = (
        Field(description="The Secret's name.")
    )
    key: Annotated[
        str,
        Field(max_length=253),
        _matches(
            "spec.webhook.secretRef.key",
            SECRET_KEY_PATTERN,
            "a key of a Secret: letters, digits, -, _ and .",
        ),
    ] = Field(description="The key in the Secret whose value is the signing key.")


class UrlSecretKeyRef(KubeModel):
    """A key of a Secret in the quota's namespace whose value is the webhook's URL."""

    name: Annotated[
        str, Field(max_length=253), _named("spec.webhook.urlSecretRef.name", "Secret")
    ] = Field(description="The Secret's name.")
    key: Annotated[
        str,
        Field(max_length=253),
        _matches(
            "spec.webhook.urlSecretRef.key",
            SECRET_KEY_PATTERN,
            "a key of a Secret: letters, digits, -, _ and .",
        ),
    ] = Field(description="The key in the Secret whose value is the URL.")


class Webhook(KubeModel):
    """Where notifications are POSTed: each threshold crossing, as JSON."""

    url: (
        Annotated[
            str,
            Field(max_length=2048),
            _matches(
                "spec.webhook.url",
                WEBHOOK_URL_PATTERN,
                "an http or https URL without credentials or spaces, such as "
                "https://billing.example.com/hooks/kmeter",
            ),
        ]
        | None
    ) = Field(
        default=None,
        description=(
            "The URL notifications are POSTed to. Use https outside the cluster; plain http "
            "suits a Service in the cluster. Set either url or urlSecretRef."
        ),
    )
    url_secret_ref: UrlSecretKeyRef | None = Field(
        default=None,
        description=(
            "The Secret key whose value is the URL, for a URL that carries a credential (a "
            "token in its path or query). Set either url or urlSecretRef."
        ),
    )
    secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "The Secret key whose value signs each notification (HMAC-SHA256 of the body), so "
            "the receiver can check it came from kmeter. Recommended."
        ),
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            rule="has(self.url) != has(self.urlSecretRef)",
            message="spec.webhook must set either url or urlSecretRef, not both",
            check=lambda hook: (hook.url is None) != (hook.url_secret_ref is None),
        ),
    )


FilterGroupBy = Annotated[
    dict[str, Annotated[str, Field(max_length=256)]],
    Field(max_length=MAX_GROUP_BY),
    group_keys_rule("spec.filterGroupBy"),
]


class QuotaSpec(KubeModel):
    """The limit, who it applies to, over which period, and what happens at the limit."""

    meter_ref: MeterRef = Field(description="The Meter whose usage is limited.")
    limit: Limit = Field(
        description=(
            "The most usage each subject may have per period, in the meter's unit (tokens, "
            "calls, ...); a number greater than 0. Exact up to 15 significant digits: the API "
            "server stores numbers with fractions as 64-bit floats."
        ),
    )
    period: Period = Field(description="The period usage is limited over, and its time zone.")
    subjects: Subjects = Field(
        default_factory=lambda: Subjects(all=True),
        json_schema_extra={"default": {"all": True}},
        description="Which subjects get the limit, each on its own (default: all).",
    )
    overrides: (
        Annotated[list[Override], Field(max_length=MAX_SUBJECTS), UniqueList("subject")] | None
    ) = Field(
        default=None,
        description=(
            "Limits for particular subjects, replacing spec.limit for them (one entry per "
            "subject). A subject listed here is limited even if subjects.names omits it."
        ),
    )
    filter_group_by: FilterGroupBy | None = Field(
        default=None,
        description=(
            "Count only the usage in these groups of the meter, such as {model: gpt-4o}: each "
            "key is one of the Meter's groupBy names, each value the group's value."
        ),
    )
    enforcement: Enforcement = Field(
        default=Enforcement.BLOCK,
        description=(
            "Block (default): the namespace's sidecars answer 429 to a subject over its limit "
            "until the next period. Notify: only notify."
        ),
    )
    notify_at: Annotated[
        list[Annotated[int, Field(ge=1, le=100)]], Field(max_length=10), UniqueList()
    ] = Field(
        default=[80, 100],
        description=(
            "Percentages of the limit at which to notify (default [80, 100]); each fires "
            "once per subject and period. [] notifies never."
        ),
    )
    rate_limit: RateLimit | None = Field(
        default=None, description="A request rate limit per subject, on top of the usage limit."
    )
    webhook: Webhook | None = Field(
        default=None, description="Where to POST notifications; without it they go to Kafka only."
    )


class Quota(KubeModel):
    """A Quota limits the usage each subject (customer) may have of one Meter per period — an
    hour, a day or a calendar month — and says what happens near and at the limit: notify,
    and block further requests (HTTP 429) at the namespace's sidecars. Reference:
    docs/resources.md."""

    api_version: Literal["kmeter.io/v1alpha1"] = API_VERSION
    kind: Literal["Quota"] = "Quota"
    metadata: ObjectMeta
    spec: QuotaSpec = Field(description="The limit, its subjects, period and enforcement.")
    status: QuotaStatus | None = Field(
        default=None, description="What the operator observed; written by the operator."
    )


__all__ = [
    "MAX_SUBJECTS",
    "RATE_PERIOD_PATTERN",
    "SECRET_KEY_PATTERN",
    "TIME_ZONE_PATTERN",
    "WEBHOOK_URL_PATTERN",
    "Enforcement",
    "Limit",
    "MeterRef",
    "Override",
    "Period",
    "PeriodUnit",
    "Quota",
    "QuotaSpec",
    "RateLimit",
    "SecretKeyRef",
    "Subjects",
    "Webhook",
]
