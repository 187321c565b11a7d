"""The subject of a request: headers, query parameters, JWT claims (verified or not), policy."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given
from hypothesis import strategies as st

from kmeter_sidecar.config import JWTSettings
from kmeter_sidecar.jwt import load_verifier
from kmeter_sidecar.subject import (
    SubjectRefused,
    SubjectResolver,
    parse_subject_source,
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(claims: dict[str, Any], alg: str, sign: Any) -> str:
    signing = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()) + "."
    signing += b64(json.dumps(claims).encode())
    return signing + "." + b64(sign(signing.encode()))


def hs256(claims: dict[str, Any], secret: bytes = b"secret") -> str:
    return token(claims, "HS256", lambda data: hmac.new(secret, data, hashlib.sha256).digest())


def bearer(value: str) -> bytes:
    return b"Bearer " + value.encode()


def test_a_header_subject_is_trimmed_and_a_missing_one_is_anonymous() -> None:
    resolver = SubjectResolver(parse_subject_source("header:X-Customer-Id"))
    assert resolver.header_key == b"x-customer-id"
    assert resolver.resolve(b"  acme  ", b"/") == "acme"
    assert resolver.resolve(None, b"/") == "anonymous"
    assert resolver.resolve(b"   ", b"/") == "anonymous"


def test_the_reject_policy_answers_401_for_a_missing_subject() -> None:
    resolver = SubjectResolver(parse_subject_source("header:X-Customer-Id"), missing="reject")
    with pytest.raises(SubjectRefused) as refused:
        resolver.resolve(None, b"/")
    assert refused.value.status == 401


def test_a_query_subject_is_percent_decoded_and_the_first_one_wins() -> None:
    resolver = SubjectResolver(parse_subject_source("query:customer"))
    assert resolver.header_key is None
    assert resolver.resolve(None, b"/x?a=1&customer=a%20b+c&customer=z") == "a b c"
    assert resolver.resolve(None, b"/x?customerx=1") == "anonymous"
    assert resolver.resolve(None, b"/x") == "anonymous"


@given(st.text(min_size=1, max_size=50).filter(lambda s: s.strip() == s and s))
def test_any_query_value_survives_percent_encoding(value: str) -> None:
    from urllib.parse import quote_plus  # noqa: PLC0415

    resolver = SubjectResolver(parse_subject_source("query:c"))
    assert resolver.resolve(None, f"/p?c={quote_plus(value)}".encode()) == value


def test_an_overlong_subject_is_refused_with_400() -> None:
    resolver = SubjectResolver(parse_subject_source("header:X-C"))
    with pytest.raises(SubjectRefused) as refused:
        resolver.resolve(b"x" * 300, b"/")
    assert refused.value.status == 400


def test_unverified_jwt_claims_are_read_when_no_key_is_configured() -> None:
    resolver = SubjectResolver(parse_subject_source("jwt-claim:org"))
    assert resolver.resolve(bearer(hs256({"org": "o-1"}, b"anything")), b"/") == "o-1"
    assert resolver.resolve(bearer(hs256({"org": 42})), b"/") == "42"
    assert resolver.resolve(bearer(hs256({"other": 1})), b"/") == "anonymous"
    assert resolver.resolve(b"Basic dXNlcg==", b"/") == "anonymous"
    with pytest.raises(SubjectRefused):
        resolver.resolve(b"Bearer not-a-jwt", b"/")


def verified(settings: JWTSettings, claim: str = "sub") -> SubjectResolver:
    return SubjectResolver(
        parse_subject_source(f"jwt-claim:{claim}"), verifier=load_verifier(settings)
    )


def refusal(resolver: SubjectResolver, value: str) -> str:
    with pytest.raises(SubjectRefused) as refused:
        resolver.resolve(bearer(value), b"/")
    assert refused.value.status == 401
    return refused.value.detail


def test_hs256_signatures_expiry_audience_and_issuer_are_checked() -> None:
    resolver = verified(JWTSettings(secret=b"secret", audience="api", issuer="idp"))
    good = {"sub": "t-1", "aud": ["api", "x"], "iss": "idp", "exp": time.time() + 60}
    assert resolver.resolve(bearer(hs256(good)), b"/") == "t-1"
    assert "signature" in refusal(resolver, hs256(good, b"other"))
    assert "expired" in refusal(resolver, hs256({**good, "exp": time.time() - 3600}))
    assert "nbf" in refusal(resolver, hs256({**good, "nbf": time.time() + 3600}))
    assert "audience" in refusal(resolver, hs256({**good, "aud": "other"}))
    assert "issuer" in refusal(resolver, hs256({**good, "iss": "evil"}))
    unsigned = b64(b'{"alg":"none"}') + "." + b64(json.dumps(good).encode()) + "."
    assert "algorithm" in refusal(resolver, unsigned)


def test_a_cached_token_is_still_refused_once_it_expires() -> None:
    settings = JWTSettings(secret=b"secret", leeway_seconds=0)
    verifier = load_verifier(settings)
    value = hs256({"sub": "t", "exp": 1000})
    assert verifier.claims(value, now=999)["sub"] == "t"
    with pytest.raises(ValueError, match="expired"):
        verifier.claims(value, now=1001)


def test_rs256_tokens_verify_against_an_rsa_public_key_and_hs256_is_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    resolver = verified(JWTSettings(public_key_pem=pem))

    def sign(data: bytes) -> bytes:
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    assert resolver.resolve(bearer(token({"sub": "r"}, "RS256", sign)), b"/") == "r"
    # alg confusion: the public key used as an HMAC secret must not verify
    assert "algorithm" in refusal(resolver, hs256({"sub": "r"}, pem))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = token(
        {"sub": "r"}, "RS256", lambda d: other.sign(d, padding.PKCS1v15(), hashes.SHA256())
    )
    assert "signature" in refusal(resolver, forged)


def test_es256_tokens_verify_against_an_ec_public_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    resolver = verified(JWTSettings(public_key_pem=pem))

    def sign(data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    assert resolver.resolve(bearer(token({"sub": "e"}, "ES256", sign)), b"/") == "e"
    assert "signature" in refusal(resolver, token({"sub": "e"}, "ES256", lambda d: b"\0" * 64))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("cookie:x", "expected header:NAME"),
        ("header:", "needs a name"),
        ("header:bad name", "not a valid HTTP header name"),
        ("sub", "expected header:NAME"),
    ],
)
def test_bad_subject_sources_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_subject_source(text)
