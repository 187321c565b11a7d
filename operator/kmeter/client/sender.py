"""Sending validated event lines to ``POST /api/v1/events`` in batches, and what became of them.

The API accepts a batch whole (204) or refuses it whole (400 naming each invalid event by its
index, docs/api.md), so one bad event must not cost the good ones: lines are validated before
sending (:mod:`.event_lines`), and should the API still refuse some (another version of the
API, other rules), the events it names are recorded as rejected, by line number and the API's
reason, and the rest of the batch is sent again. Other answers:

* **413** (body too large): the batch is split in two and each half sent; a single event that is
  still too large is rejected.
* **502/503/504** and lost connections: the same batch is sent again after ``Retry-After`` (or
  an exponential backoff), up to ``retries`` times. Sending the same events again is safe: the
  worker counts each (``source``, ``id``) once (docs/guarantees.md). If the API cannot be
  reached for the very first batch, the command stops at once rather than retrying.
* anything else (401, 403, 404, 409: no ingest topic yet, ...): sending stops with
  :class:`SendStopped`, which says which line to resume from.

Batches are sent in the file's order, ``concurrency`` of them in flight at once (the command's
default is 4): a request spends most of its time waiting for Kafka's acknowledgements, and every
aggregation is independent of the order events arrive in, so overlapping batches changes no
total. With ``concurrency=1`` the events reach the API exactly in the file's order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kmeter.client.event_lines import Line, Rejected, batch_body, batches, check_size
from kmeter.client.usage_api import Answer, ApiUnreachable, ClientError, UsageApi, refusal

EVENTS_PATH = "/api/v1/events"
BATCH_TYPE = "application/cloudevents-batch+json"
RETRYABLE = frozenset({502, 503, 504})
MAX_DELAY_S = 30.0


@dataclass
class SendReport:
    """What happened to the input: events accepted, lines rejected (with reasons)."""

    sent: int = 0
    requests: int = 0
    retries: int = 0
    rejected: list[Rejected] = field(default_factory=list)

    def sorted_rejects(self) -> list[Rejected]:
        return sorted(self.rejected, key=lambda reject: reject.number)


class SendStopped(ClientError):
    """Sending stopped before the end of the input; ``first_unsent`` is the line to resume at."""

    def __init__(self, reason: str, report: SendReport, first_unsent: int) -> None:
        super().__init__(
            f"{reason}; stopped at line {first_unsent}: {report.sent:,} events were sent, not "
            f"all of those from line {first_unsent} on (sending them again is safe: each event "
            "is counted once by its source and id)"
        )
        self.reason = reason
        self.report = report
        self.first_unsent = first_unsent


def _failures(done: Iterable[asyncio.Task[None]]) -> list[SendStopped]:
    """The :class:`SendStopped` of finished tasks; any other exception is raised."""
    found = []
    for task in done:
        error = task.exception()
        if isinstance(error, SendStopped):
            found.append(error)
        elif error is not None:
            raise error
    return found


def invalid_events(answer: Answer, count: int) -> dict[int, str]:
    """The batch indices a 400 names (``extensions.validationErrors``), with their reasons."""
    problem = answer.problem() or {}
    extensions: Any = problem.get("extensions") or {}
    errors = extensions.get("validationErrors") if isinstance(extensions, dict) else None
    found: dict[int, list[str]] = {}
    for error in errors if isinstance(errors, list) else []:
        if not isinstance(error, dict):
            continue
        index = error.get("index")
        if type(index) is not int or not 0 <= index < count:
            continue
        field_name, message = error.get("field"), error.get("message", "invalid")
        reason = f"{field_name}: {message}" if field_name and field_name != "body" else message
        found.setdefault(index, []).append(str(reason))
    return {index: "; ".join(reasons) for index, reasons in found.items()}


class Sender:
    """Sends lines through ``api``; :meth:`send` is the whole job."""

    def __init__(
        self,
        api: UsageApi,
        *,
        max_events: int,
        max_bytes: int,
        retries: int = 5,
        progress: Callable[[int], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        path: str = EVENTS_PATH,
        concurrency: int = 1,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self._reached = 0
        self.api = api
        self.path = path
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.retries = retries
        self.progress = progress or (lambda _: None)
        self.sleep = sleep
        self.report = SendReport()

    async def send(self, items: Iterable[Line | Rejected]) -> SendReport:
        """Send every valid line, record every rejected one; raise :class:`SendStopped`.

        Up to ``concurrency`` batches are in flight at once. When one batch stops the sending,
        no new batch starts, those in flight finish, and :class:`SendStopped` names the first
        line of the earliest batch that was not sent.
        """
        in_flight: set[asyncio.Task[None]] = set()
        stopped: list[SendStopped] = []
        try:
            for batch in batches(
                self._valid(items), max_events=self.max_events, max_bytes=self.max_bytes
            ):
                while len(in_flight) >= self.concurrency:
                    done, in_flight = await asyncio.wait(
                        in_flight, return_when=asyncio.FIRST_COMPLETED
                    )
                    stopped += _failures(done)
                if stopped:
                    break
                in_flight.add(asyncio.create_task(self._send_batch(batch)))
            if in_flight:
                done, in_flight = await asyncio.wait(in_flight)
                stopped += _failures(done)
        finally:
            for task in in_flight:  # only when cancelled (Ctrl-C): do not leave tasks behind
                task.cancel()
        if stopped:
            first = min(stopped, key=lambda error: error.first_unsent)
            raise SendStopped(first.reason, self.report, first.first_unsent)
        return self.report

    def _valid(self, items: Iterable[Line | Rejected]) -> Iterator[Line]:
        for item in items:
            checked = check_size(item, self.max_bytes)
            if isinstance(checked, Rejected):
                self.report.rejected.append(checked)
                self._advance(checked.end)
            else:
                yield checked

    def _advance(self, end: int) -> None:
        """Progress: batches finish out of order, so the bar shows the furthest end reached."""
        self._reached = max(self._reached, end)
        self.progress(self._reached)

    async def _send_batch(self, batch: list[Line]) -> None:
        pending = [batch]
        while pending:
            part = pending.pop(0)
            answer = await self._post(part)
            if answer.status < 300:
                self.report.sent += len(part)
            elif answer.status == 400 and (invalid := invalid_events(answer, len(part))):
                for index, reason in invalid.items():
                    self.report.rejected.append(
                        Rejected(part[index].number, reason, part[index].end)
                    )
                rest = [line for index, line in enumerate(part) if index not in invalid]
                if rest:
                    pending.insert(0, rest)
            elif answer.status == 413 and len(part) > 1:
                half = len(part) // 2
                pending[0:0] = [part[:half], part[half:]]
            elif answer.status == 413:
                self.report.rejected.append(
                    Rejected(
                        part[0].number,
                        f"the API refused it as too large: {answer.detail()}",
                        part[0].end,
                    )
                )
            else:
                raise SendStopped(refusal(answer, f"POST {self.path}"), self.report, part[0].number)
        self._advance(batch[-1].end)

    async def _post(self, part: list[Line]) -> Answer:
        body = batch_body(part)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                answer = await self.api.request(
                    "POST", self.path, body=body, content_type=BATCH_TYPE
                )
            except ApiUnreachable as error:
                if last or self.report.requests == 0:
                    raise SendStopped(str(error), self.report, part[0].number) from None
                delay = self._backoff(attempt)
            else:
                self.report.requests += 1
                if answer.status not in RETRYABLE or last:
                    return answer
                delay = min(answer.retry_after(self._backoff(attempt)), MAX_DELAY_S)
            self.report.retries += 1
            await self.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def _backoff(attempt: int) -> float:
        return float(min(0.5 * 2**attempt, MAX_DELAY_S))
