"""Quota enforcement at the sidecar (kmeter_sidecar.quotas): verdicts from decision records.

Records go through the contract's encode functions and :meth:`QuotaTable.apply`, as the
follower feeds them; the clocks are the test's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.quota_records import quota_policy, record_of, subject_decision

from kmeter.decisions import (
    DecisionFormatError,
    QuotaPolicy,
    RateLimitPolicy,
    SubjectDecision,
    decode_policy,
    encode_decision,
    encode_policy,
    policy_key,
    subject_key,
)
from kmeter_sidecar.quotas import QuotaTable, Verdict
from kmeter_sidecar.rate_limit import NANOS

NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DAY_START = datetime(2026, 11, 25, tzinfo=UTC)
DAY_END = DAY_START + timedelta(days=1)


@dataclass
class Clock:
    wall_seconds: float = NOON.timestamp()
    mono: int = 10**12

    def wall(self) -> float:
        return self.wall_seconds

    def mono_ns(self) -> int:
        return self.mono


def policy(**changes: Any) -> QuotaPolicy:
    return quota_policy(**changes)


def decision(used: int | str, subject: str = "c1", **changes: Any) -> SubjectDecision:
    return subject_decision(subject, used, (DAY_START, DAY_END), **changes)


def table_with(*records: QuotaPolicy | SubjectDecision, clock: Clock | None = None) -> QuotaTable:
    clock = clock or Clock()
    table = QuotaTable("http.request", wall=clock.wall, mono_ns=clock.mono_ns)
    for record in records:
        send(table, record)
    return table


def send(table: QuotaTable, record: QuotaPolicy | SubjectDecision) -> None:
    table.apply(*record_of(record))


def refused(verdict: Verdict | None) -> str | None:
    return None if verdict is None or verdict.refusal is None else verdict.refusal.reason


def head_and_body(verdict: Verdict) -> tuple[dict[str, str], dict[str, object]]:
    assert verdict.refusal is not None
    response = verdict.refusal.response(close=False).decode()
    head, _, body = response.partition("\r\n\r\n")
    lines = head.split("\r\n")
    return dict(line.split(": ", 1) for line in lines[1:]), orjson.loads(body)


# --- usage quotas ---------------------------------------------------------------------------


def test_a_subject_at_its_limit_is_refused_with_the_headers_and_a_problem_naming_the_quota() -> (
    None
):
    table = table_with(policy(counts_requests=True), decision(99))
    assert refused(table.check("c1")) is None
    send(table, decision(100))
    verdict = table.check("c1")
    assert refused(verdict) == "quota"
    assert verdict is not None
    headers, body = head_and_body(verdict)
    assert headers["RateLimit-Policy"] == '"free-tier";q=100;w=86400'
    assert headers["RateLimit"] == '"free-tier";r=0;t=43200'
    assert headers["Retry-After"] == "43200", "seconds until the period resets"
    assert headers["Content-Type"] == "application/problem+json"
    assert body["status"] == 429
    assert body["type"] == "https://iana.org/assignments/http-problem-types#quota-exceeded"
    assert body["violated-policies"] == ["free-tier"]
    assert (body["quota"], body["used"], body["limit"]) == ("free-tier", "100", "100")
    assert body["resetAt"] == "2026-11-26T00:00:00Z"
    assert "free-tier" in str(body["detail"])


def test_an_admitted_request_carries_what_is_left() -> None:
    table = table_with(policy(), decision(40))
    verdict = table.check("c1")
    assert verdict is not None
    assert dict(verdict.headers) == {
        b"RateLimit-Policy": b'"free-tier";q=100;w=86400;kmeter-meter="api-calls"',
        b"RateLimit": b'"free-tier";r=60;t=43200',
    }


def test_a_subject_the_quota_does_not_name_is_not_concerned() -> None:
    table = table_with(policy(subjects=frozenset({"c1"}), overrides={"vip": Decimal(5)}))
    assert table.check("someone-else") is None
    assert table.check("c1") is not None
    assert table.check("vip") is not None, "an override brings its subject under the quota"


def test_notify_never_refuses_and_advertises_nothing() -> None:
    table = table_with(policy(enforcement="Notify"), decision(1000))
    assert table.check("c1") is None


def test_an_override_subject_has_its_own_limit() -> None:
    table = table_with(
        policy(overrides={"big": Decimal(500)}), decision(200, "big"), decision(200, "c1")
    )
    assert refused(table.check("big")) is None
    assert refused(table.check("c1")) == "quota"
    send(table, decision(500, "big"))
    assert refused(table.check("big")) == "quota"


def test_raising_the_limit_unblocks_at_once_and_a_policy_tombstone_lifts_everything() -> None:
    table = table_with(policy(), decision(150))
    assert refused(table.check("c1")) == "quota"
    send(table, policy(limit=Decimal(200), generation=2))
    assert refused(table.check("c1")) is None
    table.apply(policy_key("free-tier"), None)
    assert table.check("c1") is None


def test_a_decision_tombstone_forgets_the_subjects_usage() -> None:
    table = table_with(policy(), decision(150))
    table.apply(subject_key("free-tier", "c1"), None)
    assert refused(table.check("c1")) is None


def test_a_decision_only_holds_within_its_period_and_the_period_rolls_over_here() -> None:
    clock = Clock()
    table = table_with(policy(), decision(150), clock=clock)
    assert refused(table.check("c1")) == "quota"
    clock.wall_seconds = DAY_END.timestamp() - 0.001
    assert refused(table.check("c1")) == "quota"
    clock.wall_seconds = DAY_END.timestamp()
    verdict = table.check("c1")
    assert refused(verdict) is None
    assert verdict is not None
    assert dict(verdict.headers)[b"RateLimit"] == b'"free-tier";r=100;t=86400'


def test_a_decision_whose_period_ended_before_it_arrived_is_not_enforced() -> None:
    yesterday = decision(150, period_start=DAY_START - timedelta(days=1), period_end=DAY_START)
    assert refused(table_with(policy(), yesterday).check("c1")) is None


def test_decisions_that_arrive_before_their_policy_are_enforced_once_it_arrives() -> None:
    table = table_with(decision(150))
    assert table.check("c1") is None
    send(table, policy())
    assert refused(table.check("c1")) == "quota"


def test_quotas_on_another_event_type_are_not_this_sidecars() -> None:
    table = table_with(policy(event_type="llm.completion"), decision(150))
    assert table.check("c1") is None
    assert not table.engaged


def test_months_and_time_zones_give_the_calendar_period() -> None:
    clock = Clock(wall_seconds=datetime(2026, 11, 25, 12, tzinfo=UTC).timestamp())
    table = table_with(policy(period="MONTH", time_zone="Europe/Paris"), clock=clock)
    verdict = table.check("c1")
    assert verdict is not None
    # November in Paris: 2026-10-31T23:00Z .. 2026-11-30T23:00Z, 30 days
    assert dict(verdict.headers)[b"RateLimit-Policy"].endswith(
        b'w=2592000;kmeter-meter="api-calls"'
    )
    ends = datetime(2026, 11, 30, 23, tzinfo=UTC).timestamp() - clock.wall_seconds
    assert dict(verdict.headers)[b"RateLimit"] == b'"free-tier";r=100;t=%d' % ends


def test_a_fractional_limit_is_advertised_rounded_down() -> None:
    table = table_with(policy(limit=Decimal("12.5")), decision("2.25"))
    verdict = table.check("c1")
    assert verdict is not None
    assert dict(verdict.headers)[b"RateLimit"] == b'"free-tier";r=10;t=43200'
    assert dict(verdict.headers)[b"RateLimit-Policy"].startswith(b'"free-tier";q=12;')


# --- counting locally between decisions -----------------------------------------------------


def test_a_counting_quota_refuses_request_101_without_waiting_for_a_decision() -> None:
    table = table_with(policy(counts_requests=True))
    verdicts = [table.check("c1") for _ in range(103)]
    assert [refused(v) for v in verdicts] == [None] * 100 + ["quota"] * 3
    last_admitted = verdicts[99]
    assert last_admitted is not None
    assert dict(last_admitted.headers)[b"RateLimit"] == b'"free-tier";r=0;t=43200'


def test_a_late_decision_below_the_local_count_does_not_unblock() -> None:
    table = table_with(policy(counts_requests=True))
    for _ in range(100):
        table.check("c1")
    send(table, decision(60))  # evaluated when only 60 events had reached the worker
    assert refused(table.check("c1")) == "quota"


def test_without_counts_requests_the_sidecar_waits_for_decisions() -> None:
    table = table_with(policy(counts_requests=False))
    assert all(refused(table.check("c1")) is None for _ in range(150))


def test_a_decision_of_the_next_period_is_kept_while_this_one_is_summed_locally() -> None:
    clock = Clock(wall_seconds=(DAY_END - timedelta(seconds=1)).timestamp())  # 23:59:59
    tomorrow = decision(
        120, period_start=DAY_END, period_end=DAY_END + timedelta(days=1)
    )  # the worker's clock is a little ahead
    table = table_with(policy(sums_value=TOKENS), tomorrow, clock=clock)
    table.record("c1", tokens(30))  # today's usage, counted here
    assert refused(table.check("c1")) is None
    clock.wall_seconds += 2  # tomorrow: its decision applies
    assert refused(table.check("c1")) == "quota"


def steps_of(values: st.SearchStrategy[int]) -> st.SearchStrategy[list[tuple[str, int]]]:
    return st.lists(
        st.one_of(
            st.tuples(st.just("request"), values),  # admitted? then its event has this value
            st.just(("evaluate", 0)),  # the worker snapshots the true usage into a decision
            st.just(("deliver", 0)),  # the oldest evaluated decision reaches the sidecar
            st.tuples(st.just("elsewhere"), st.integers(1, 60)),  # usage via other replicas
        ),
        max_size=250,
    )


def drive(
    table: QuotaTable, limit: int, steps: list[tuple[str, int]], *, sums: bool
) -> tuple[bool, int]:
    """Play ``steps`` against ``table``, checking that no request is refused while the true usage
    is under ``limit``: whether the sidecar was alone (no usage elsewhere), and how many
    requests it admitted."""
    true_usage = admitted = 0
    evaluated: list[int] = []
    alone = True
    for action, amount in steps:
        if action == "request":
            if refused(table.check("c1")) is None:
                if sums:
                    table.record("c1", tokens(amount))
                true_usage += amount
                admitted += 1
            else:
                assert true_usage >= limit, "refused while truly under the limit"
        elif action == "evaluate":
            evaluated.append(true_usage)
        elif action == "deliver" and evaluated:
            send(table, decision(evaluated.pop(0), limit=Decimal(limit)))
        elif action == "elsewhere":
            true_usage += amount
            alone = False
    if alone and true_usage >= limit:  # alone, it stops as soon as the usage reaches the limit
        assert refused(table.check("c1")) == "quota"
    return alone, admitted


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 120), steps=steps_of(st.just(1)))
def test_local_counting_never_refuses_a_subject_truly_under_its_limit(
    limit: int, steps: list[tuple[str, int]]
) -> None:
    table = table_with(policy(counts_requests=True, limit=Decimal(limit)))
    alone, admitted = drive(table, limit, steps, sums=False)
    if alone:
        requests = sum(1 for action, _ in steps if action == "request")
        assert admitted == min(requests, limit), "alone, the sidecar stops exactly at the limit"


TOKENS = "$.usage.total_tokens"


def tokens(count: object) -> dict[str, object]:
    """The data of an event the sidecar emits, with the value it read from the response."""
    return {"method": "POST", "route": "/v1/chat", "usage": {"total_tokens": count}}


def test_a_summing_quota_adds_the_values_of_the_events_it_emits_until_the_next_decision() -> None:
    table = table_with(policy(sums_value=TOKENS))
    for _ in range(3):
        assert refused(table.check("c1")) is None
        table.record("c1", tokens(30))
    assert refused(table.check("c1")) is None  # 90 of 100
    table.record("c1", tokens(30))
    verdict = table.check("c1")
    assert refused(verdict) == "quota"
    assert verdict is not None
    assert verdict.refusal is not None
    assert "used 120 of its limit of 100" in verdict.refusal.detail


def test_a_late_decision_below_the_local_sum_does_not_unblock_and_a_higher_one_wins() -> None:
    table = table_with(policy(sums_value=TOKENS))
    table.record("c1", tokens(60))
    send(table, decision(20))  # evaluated before most of those tokens reached the worker
    assert refused(table.check("c1")) is None  # max(20, 60) = 60
    table.record("c1", tokens(30))  # 90
    send(table, decision(95))  # other replicas' usage too: 95 > 90
    assert refused(table.check("c1")) is None
    table.record("c1", tokens(5))
    assert refused(table.check("c1")) == "quota"


@pytest.mark.parametrize("value", [None, "many", {"n": 1}, -40, 0])
def test_values_that_are_not_positive_numbers_add_nothing_locally(value: object) -> None:
    table = table_with(policy(sums_value=TOKENS, limit=Decimal(10)))
    table.record("c1", tokens(value))
    table.record("c1", {"method": "GET"})  # no usage at all
    assert refused(table.check("c1")) is None
    table.record("c1", tokens("10"))  # a numeric string counts, as in the worker
    assert refused(table.check("c1")) == "quota"


def test_a_notify_quota_and_one_without_sums_value_wait_for_decisions() -> None:
    for quota in (policy(sums_value=TOKENS, enforcement="Notify"), policy()):
        table = table_with(quota)
        table.record("c1", tokens(500))
        assert refused(table.check("c1")) is None
        assert not table.summing


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 500), steps=steps_of(st.integers(0, 40)))
def test_local_summing_never_refuses_a_subject_truly_under_its_limit(
    limit: int, steps: list[tuple[str, int]]
) -> None:
    drive(table_with(policy(sums_value=TOKENS, limit=Decimal(limit))), limit, steps, sums=True)


# --- rate limits ----------------------------------------------------------------------------


def test_a_rate_limit_admits_the_burst_then_refuses_until_the_next_token() -> None:
    clock = Clock()
    table = table_with(
        policy(rate_limit=RateLimitPolicy(2, 1, 3), enforcement="Notify"), clock=clock
    )
    verdicts = [table.check("c1") for _ in range(4)]
    assert [refused(v) for v in verdicts] == [None, None, None, "rate_limit"]
    assert verdicts[3] is not None
    headers, body = head_and_body(verdicts[3])
    assert headers["RateLimit-Policy"] == '"free-tier/rate";q=2;w=1;kmeter-burst=3'
    assert headers["RateLimit"] == '"free-tier/rate";r=0;t=1'
    assert headers["Retry-After"] == "1"
    assert body["violated-policies"] == ["free-tier/rate"]
    assert body["retryAfterSeconds"] == 0.5
    clock.mono += NANOS // 2
    assert refused(table.check("c1")) is None
    assert refused(table.check("c1")) == "rate_limit"


def test_a_request_over_its_quota_takes_no_token() -> None:
    table = table_with(policy(rate_limit=RateLimitPolicy(1, 60, 1)), decision(100))
    assert refused(table.check("c1")) == "quota"
    send(table, decision(0))
    assert refused(table.check("c1")) is None, "the token was still there"


def test_a_request_refused_by_one_rate_limit_gives_the_other_its_token_back() -> None:
    loose = policy(quota="a-loose", rate_limit=RateLimitPolicy(1, 60, 2), enforcement="Notify")
    tight = policy(quota="b-tight", rate_limit=RateLimitPolicy(1, 60, 1), enforcement="Notify")
    table = table_with(loose, tight)
    assert refused(table.check("c1")) is None  # both take one: loose 1 left, tight 0
    assert refused(table.check("c1")) == "rate_limit"  # tight refuses; loose gets its token back
    tight_gone = table_with(loose)
    tight_gone.check("c1")
    assert refused(tight_gone.check("c1")) is None
    send(table, policy(quota="b-tight", rate_limit=None, enforcement="Notify", generation=2))
    assert refused(table.check("c1")) is None, "loose still had its second token"


# --- records and availability ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (b"policy/free-tier", b"not json", "not JSON"),
        (b"policy/free-tier", encode_policy(policy(quota="other")), "key names quota"),
        (b"policy/free-tier", encode_policy(policy(period="WEEK")), "period"),
        (b"policy/free-tier", encode_policy(policy(time_zone="Mars/Base")), "time zone"),
        (b"policy/free-tier", encode_policy(policy(limit=Decimal(0))), "greater than 0"),
        (b"subject/free-tier/c2", encode_decision(decision(1)), "key names"),
        (b"whatever", b"{}", "neither"),
        (None, b"{}", "without a key"),
    ],
)
def test_a_malformed_record_is_refused_and_changes_nothing(
    key: bytes | None, value: bytes, message: str
) -> None:
    table = table_with(policy(), decision(150))
    with pytest.raises(DecisionFormatError, match=message):
        table.apply(key, value)
    assert refused(table.check("c1")) == "quota"


def test_failing_closed_refuses_everything_with_503_until_decisions_load() -> None:
    clock = Clock()
    closed = QuotaTable("http.request", wall=clock.wall, mono_ns=clock.mono_ns, fail_closed=True)
    closed.set_unavailable("the topic kmeter.a.quota-decisions does not exist")
    verdict = closed.check("anyone")
    assert refused(verdict) == "decisions_unavailable"
    assert verdict is not None
    headers, body = head_and_body(verdict)
    assert body["status"] == 503
    assert "does not exist" in str(body["detail"])
    assert headers["Retry-After"] == "5"
    closed.set_unavailable(None)
    assert closed.check("anyone") is None
    opened = QuotaTable("http.request", wall=clock.wall, mono_ns=clock.mono_ns)
    opened.set_unavailable("Kafka is away")
    assert opened.check("anyone") is None
    assert not opened.engaged


def test_sweeping_drops_ended_periods_and_full_buckets() -> None:
    clock = Clock()
    table = table_with(
        policy(counts_requests=True, rate_limit=RateLimitPolicy(1, 1, 1)), clock=clock
    )
    table.check("c1")
    assert (table.subjects, table.buckets) == (1, 1)
    clock.mono += NANOS
    table.sweep()
    assert (table.subjects, table.buckets) == (1, 0)
    clock.wall_seconds = DAY_END.timestamp()
    table.sweep()
    assert table.subjects == 0


@given(
    subjects=st.none() | st.frozensets(st.text(max_size=12), max_size=4),
    counts=st.booleans(),
    summed=st.none() | st.sampled_from([TOKENS, "$['usage']['input tokens']"]),
    overrides=st.dictionaries(st.text(max_size=8), st.integers(1, 10**9).map(Decimal), max_size=3),
)
def test_a_policy_reads_back_as_written_with_the_fields_added_for_enforcement(
    subjects: frozenset[str] | None,
    counts: bool,
    summed: str | None,
    overrides: dict[str, Decimal],
) -> None:
    written = policy(
        subjects=subjects, counts_requests=counts, sums_value=summed, overrides=overrides
    )
    assert decode_policy(encode_policy(written)) == written


def test_a_policy_from_a_writer_without_the_added_fields_covers_all_and_counts_nothing() -> None:
    document = orjson.loads(encode_policy(policy(subjects=frozenset({"a"}), counts_requests=True)))
    del document["subjects"], document["countsRequests"], document["sumsValue"]
    older = decode_policy(orjson.dumps(document))
    assert (older.subjects, older.counts_requests, older.sums_value) == (None, False, None)
    assert older.applies_to("anyone")
