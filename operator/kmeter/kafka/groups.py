"""Consumer groups: deleting a Meter's group when the Meter is deleted with its topics.

aiokafka's admin client has no DeleteGroups call, so this sends Kafka's ``DeleteGroups``
request (API key 42, from aiokafka's own protocol classes) to the group's coordinator. A
group that does not exist is not an error; a group that still has members is
(``NON_EMPTY_GROUP``): its workers must be gone first.
"""

from __future__ import annotations

from aiokafka.errors import for_code
from aiokafka.protocol.admin import DeleteGroupsRequest

from kmeter.kafka.admin import KafkaAdmin, KafkaAdminError

NONE = 0
GROUP_ID_NOT_FOUND = 69


class GroupError(KafkaAdminError):
    """Kafka refused to delete a group; the message names the group and Kafka's error."""

    def __init__(self, group: str, error: str) -> None:
        super().__init__(f"cannot delete consumer group {group}: {error}")
        self.group = group
        self.error = error


async def delete_consumer_group(admin: KafkaAdmin, group: str) -> bool:
    """Delete ``group``; True when it existed. Raises :class:`GroupError` when Kafka refuses."""
    async with admin.call(f"deleting consumer group {group}") as client:
        coordinator = await client.find_coordinator(group)
        # aiokafka's request plumbing is private; this is the one place kmeter uses it.
        response = await client._send_request(DeleteGroupsRequest([group]), coordinator)
    for name, code in response.results:
        if name != group or code == GROUP_ID_NOT_FOUND:
            continue
        if code != NONE:
            raise GroupError(group, for_code(code).__name__)
        return True
    return False
