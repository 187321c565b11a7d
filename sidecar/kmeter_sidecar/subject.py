"""Who a request is for: the subject (customer) from a header, a JWT claim or a query parameter.

``--subject-from`` picks one source:

* ``header:X-Customer-Id`` — the header's value (the first one when repeated), trimmed;
* ``jwt-claim:sub`` — the claim of the bearer token in ``Authorization: Bearer <jwt>``. When a
  key is configured the token is verified (:mod:`kmeter_sidecar.jwt`) and a bad token is a 401;
  without one the claims are read unverified. A malformed token is a 401 either way. A claim
  that is a number becomes its decimal text; any other non-string is "no subject";
* ``query:customer`` — the URL query parameter (the first one when repeated), percent-decoded.

An empty value is no subject. What happens then is ``--missing-subject``: ``anonymous`` counts
the request under the subject ``anonymous``, ``reject`` answers 401. A subject longer than
:data:`MAX_SUBJECT_LENGTH` characters is refused with 400 (it becomes a Kafka key).

The proxy looks for :attr:`SubjectResolver.header_key` while it walks the request headers once,
and hands the value it found (or the URL) to :meth:`SubjectResolver.resolve`: no second pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import unquote_plus

from kmeter_sidecar.jwt import InvalidToken, Verifier, decode_unverified

__all__ = [
    "MAX_SUBJECT_LENGTH",
    "SubjectRefused",
    "SubjectResolver",
    "SubjectSource",
    "parse_subject_source",
]

MAX_SUBJECT_LENGTH: Final = 256
Kind = Literal["header", "jwt-claim", "query"]
_KINDS: Final = ("header", "jwt-claim", "query")
_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


@dataclass(frozen=True, slots=True)
class SubjectSource:
    """Where the subject comes from: ``kind`` and the header, claim or parameter ``name``."""

    kind: Kind
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def parse_subject_source(text: str) -> SubjectSource:
    """``header:NAME`` | ``jwt-claim:CLAIM`` | ``query:PARAM``, or ValueError with the reason."""
    kind, sep, name = text.strip().partition(":")
    if not sep or kind not in _KINDS:
        raise ValueError(f"expected header:NAME, jwt-claim:CLAIM or query:PARAM, got {text!r}")
    if not name:
        raise ValueError(f"{kind}: needs a name after the colon, e.g. {kind}:customer")
    if kind == "header" and not set(name) <= _TOKEN_CHARS:
        raise ValueError(f"{name!r} is not a valid HTTP header name")
    return SubjectSource(kind, name)  # type: ignore[arg-type]


class SubjectRefused(Exception):
    """The request cannot be metered: answer ``status`` (401 or 400) with ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return raw.decode("latin-1").strip()


def _query_value(query: str, name: str) -> str | None:
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == name or (("%" in key or "+" in key) and unquote_plus(key) == name):
            return unquote_plus(value)
    return None


class SubjectResolver:
    """Resolves the subject of a request per the configured source and missing-subject policy."""

    def __init__(
        self,
        source: SubjectSource,
        *,
        verifier: Verifier | None = None,
        missing: Literal["anonymous", "reject"] | str = "anonymous",
        anonymous: str = "anonymous",
    ) -> None:
        self.source = source
        self._verifier = verifier
        self._reject_missing = missing == "reject"
        self._anonymous = anonymous
        self.header_key: bytes | None = (
            source.name.lower().encode("ascii")
            if source.kind == "header"
            else b"authorization"
            if source.kind == "jwt-claim"
            else None
        )
        """The lower-case header whose value :meth:`resolve` needs, or None (query)."""

    def resolve(self, header_value: bytes | None, url: bytes) -> str:
        """The subject; raises :class:`SubjectRefused` for 401/400 answers."""
        kind = self.source.kind
        subject: str | None
        if kind == "header":
            subject = _text(header_value) if header_value is not None else None
        elif kind == "jwt-claim":
            subject = self._from_jwt(header_value)
        else:
            _, _, query = url.partition(b"?")
            query, _, _ = query.partition(b"#")
            subject = _query_value(_text(query), self.source.name) if query else None
            subject = subject.strip() if subject is not None else None
        if not subject:
            if self._reject_missing:
                raise SubjectRefused(401, f"the request has no subject ({self.source})")
            return self._anonymous
        if len(subject) > MAX_SUBJECT_LENGTH:
            raise SubjectRefused(
                400, f"the subject ({self.source}) is longer than {MAX_SUBJECT_LENGTH} characters"
            )
        return subject

    def _from_jwt(self, authorization: bytes | None) -> str | None:
        if authorization is None:
            return None
        scheme, _, token_bytes = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        token = _text(token_bytes)
        if not token:
            return None
        try:
            if self._verifier is not None:
                claims = self._verifier.claims(token)
            else:
                claims = decode_unverified(token)
        except InvalidToken as error:
            raise SubjectRefused(401, f"invalid bearer token: {error}") from None
        value = claims.get(self.source.name)
        if isinstance(value, str):
            return value.strip()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return None
