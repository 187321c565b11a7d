"""ISO 8601 durations, as Meter retention is written (``P400D``, ``PT36H``, ``P2W``).

Only exact units are accepted — weeks, days, hours, minutes, seconds. Years and months have
no fixed length, so ``P1Y`` is refused rather than guessed (write ``P365D``).
"""

from __future__ import annotations

import re
from datetime import timedelta

ISO_DURATION_PATTERN = r"^P(?!$)(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?$"
_ISO = re.compile(ISO_DURATION_PATTERN)


def parse_iso_duration(text: str) -> timedelta:
    """``P400D`` → 400 days. Raises :class:`ValueError` with a reason a person reads."""
    match = _ISO.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not an ISO 8601 duration of weeks, days, hours, minutes and seconds "
            "(for example P400D or PT36H)"
        )
    weeks, days, _, hours, minutes, seconds = (
        int(group[:-1]) if group and group[0] != "T" else 0 for group in match.groups()
    )
    return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)
