"""Consumer groups: deleting a Meter's group when the Meter is deleted with its topics.

aiokafka's admin client has no DeleteGroups call, so this sends Kafka's ``DeleteGroups``
request (API key 42, from aiokafka's own protocol classes) to the group's coordinator. A group
that does not exist is not an error; a group that still has members is (``NON_EMPTY_GROUP``):
its workers must be gone first. The coordinator may be briefly unavailable — on a fresh
cluster the internal ``__consumer_offsets`` topic is created by the first group request — so
those errors are retried for a while before they are reported.
"""

from __future__ import annotations

import asyncio

from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    KafkaError,
    NotCoordinatorError,
    for_code,
)
from aiokafka.protocol.admin import DeleteGroupsRequest

from kmeter.kafka.admin import KafkaAdmin, KafkaAdminError

NONE = 0
GROUP_ID_NOT_FOUND = 69
RETRIABLE = (CoordinatorLoadInProgressError, CoordinatorNotAvailableError, NotCoordinatorError)
ATTEMPTS = 20
BACKOFF_S = 0.5


class GroupError(KafkaAdminError):
    """Kafka refused to delete a group; the message names the group and Kafka's error."""

    def __init__(self, group: str, error: str) -> None:
        super().__init__(f"cannot delete consumer group {group}: {error}")
        self.group = group
        self.error = error


async def delete_consumer_group(admin: KafkaAdmin, group: str) -> bool:
    """Delete ``group``; True when it existed. Raises :class:`GroupError` when Kafka refuses."""
    for attempt in range(ATTEMPTS):
        try:
            return await _delete(admin, group)
        except RETRIABLE as error:
            if attempt == ATTEMPTS - 1:
                raise GroupError(group, type(error).__name__) from error
            await asyncio.sleep(BACKOFF_S)
    raise AssertionError("unreachable")  # pragma: no cover


async def _delete(admin: KafkaAdmin, group: str) -> bool:
    async with admin.call(f"deleting consumer group {group}") as client:
        try:
            coordinator = await client.find_coordinator(group)
            # aiokafka's request plumbing is private; this is the one place kmeter uses it.
            response = await client._send_request(DeleteGroupsRequest([group]), coordinator)
        except RETRIABLE:
            raise
        except KafkaError as error:
            raise GroupError(group, type(error).__name__) from error
    for name, code in response.results:
        if name != group or code == GROUP_ID_NOT_FOUND:
            continue
        failure = for_code(code)
        if failure in RETRIABLE:
            raise failure(f"deleting consumer group {group}")
        if code != NONE:
            raise GroupError(group, failure.__name__)
        return True
    return False
