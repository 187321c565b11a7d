"""JWT verification for subjects taken from a claim: HS256/384/512, RS256/384/512, ES256/384.

Why not PyJWT: the sidecar needs one narrow thing — check a compact JWS against one configured
key and read a claim — and does it per request. The standard library does HMAC; the
``cryptography`` package (imported only when a public key is configured) does RSA and ECDSA.
That is ~100 lines we control, with no algorithm negotiation to get wrong:

* the algorithm is fixed by the configured key, never chosen by the token: a secret accepts
  only ``HS*``, an RSA key only ``RS*``, an EC key only the ``ES*`` of its curve; ``none`` and
  anything else are refused (no "alg confusion" between a public key and an HMAC secret);
* ``exp`` and ``nbf`` are checked with a leeway (30 s), ``aud`` and ``iss`` when configured;
* verified tokens are cached (a bounded dict keyed by the token text), so a client sending the
  same token on every request pays one RSA/ECDSA verification, not one per request; ``exp`` is
  still checked on every use.

Without a configured key, :func:`decode_unverified` reads the claims without any check: the
sidecar then trusts whoever can reach it (see docs/sidecar.md, "Trust model").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import orjson

if TYPE_CHECKING:
    from kmeter_sidecar.config import JWTSettings

__all__ = ["InvalidToken", "Verifier", "decode_unverified", "load_verifier"]

_CACHE_SIZE: Final = 4096
_HMAC: Final = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


class InvalidToken(ValueError):
    """The token is malformed, badly signed, expired or not for us; the message says which."""


def _b64decode(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("the token is not base64url") from None


def _split(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("a JWT has three dot-separated parts")
    try:
        header = orjson.loads(_b64decode(parts[0]))
        claims = orjson.loads(_b64decode(parts[1]))
    except orjson.JSONDecodeError:
        raise InvalidToken("the token's header or payload is not JSON") from None
    if type(header) is not dict or type(claims) is not dict:
        raise InvalidToken("the token's header and payload must be JSON objects")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii", "replace")
    return header, claims, signing_input, _b64decode(parts[2])


def decode_unverified(token: str) -> dict[str, Any]:
    """The claims of a well-formed token, without checking anything else."""
    return _split(token)[1]


SignatureCheck = Callable[[str, bytes, bytes], bool]


def _hmac_check(secret: bytes) -> tuple[frozenset[str], SignatureCheck]:
    def check(alg: str, signing_input: bytes, signature: bytes) -> bool:
        expected = hmac.new(secret, signing_input, _HMAC[alg]).digest()
        return hmac.compare_digest(expected, signature)

    return frozenset(_HMAC), check


def _public_key_check(pem: bytes) -> tuple[frozenset[str], SignatureCheck]:
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.utils import (  # noqa: PLC0415
        encode_dss_signature,
    )

    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as error:
        raise ValueError(f"not a PEM public key: {error}") from None
    hash_of: dict[str, hashes.HashAlgorithm] = {
        "256": hashes.SHA256(),
        "384": hashes.SHA384(),
        "512": hashes.SHA512(),
    }

    if isinstance(key, rsa.RSAPublicKey):
        rsa_key = key

        def check_rsa(alg: str, signing_input: bytes, signature: bytes) -> bool:
            try:
                rsa_key.verify(signature, signing_input, padding.PKCS1v15(), hash_of[alg[2:]])
            except InvalidSignature:
                return False
            return True

        return frozenset({"RS256", "RS384", "RS512"}), check_rsa
    if isinstance(key, ec.EllipticCurvePublicKey):
        curves = {"secp256r1": ("ES256", 32), "secp384r1": ("ES384", 48)}
        if key.curve.name not in curves:
            raise ValueError(f"EC curve {key.curve.name} is not supported (P-256 or P-384)")
        alg_name, size = curves[key.curve.name]
        ec_key = key

        def check_ec(alg: str, signing_input: bytes, signature: bytes) -> bool:
            if len(signature) != 2 * size:
                return False
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            try:
                ec_key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hash_of[alg[2:]]))
            except InvalidSignature:
                return False
            return True

        return frozenset({alg_name}), check_ec
    raise ValueError("the public key must be RSA (RS256) or EC P-256/P-384 (ES256/ES384)")


class Verifier:
    """Verifies tokens against one configured key; :meth:`claims` returns the checked claims."""

    def __init__(self, settings: JWTSettings) -> None:
        if settings.secret is not None:
            self.algorithms, self._check = _hmac_check(settings.secret)
        elif settings.public_key_pem is not None:
            self.algorithms, self._check = _public_key_check(settings.public_key_pem)
        else:
            raise ValueError("a JWT verifier needs a secret or a public key")
        self._audience = settings.audience
        self._issuer = settings.issuer
        self._leeway = settings.leeway_seconds
        self._cache: dict[str, dict[str, Any]] = {}

    def claims(self, token: str, now: float | None = None) -> dict[str, Any]:
        """The verified claims of ``token``, or :class:`InvalidToken`."""
        claims = self._cache.get(token)
        if claims is None:
            claims = self._verify(token)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[token] = claims
        self._check_times(claims, time.time() if now is None else now)
        return claims

    def _verify(self, token: str) -> dict[str, Any]:
        header, claims, signing_input, signature = _split(token)
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise InvalidToken(
                f"the token's algorithm {alg!r} is not the configured key's "
                f"({', '.join(sorted(self.algorithms))})"
            )
        if not self._check(alg, signing_input, signature):
            raise InvalidToken("the token's signature is invalid")
        if self._issuer is not None and claims.get("iss") != self._issuer:
            raise InvalidToken("the token's issuer (iss) is not the expected one")
        if self._audience is not None:
            audience = claims.get("aud")
            audiences = audience if isinstance(audience, list) else [audience]
            if self._audience not in audiences:
                raise InvalidToken("the token's audience (aud) is not the expected one")
        return claims

    def _check_times(self, claims: dict[str, Any], now: float) -> None:
        expires = claims.get("exp")
        if expires is not None:
            if not isinstance(expires, int | float) or isinstance(expires, bool):
                raise InvalidToken("the token's exp is not a number")
            if now > expires + self._leeway:
                raise InvalidToken("the token has expired")
        not_before = claims.get("nbf")
        if not_before is not None:
            if not isinstance(not_before, int | float) or isinstance(not_before, bool):
                raise InvalidToken("the token's nbf is not a number")
            if now < not_before - self._leeway:
                raise InvalidToken("the token is not valid yet (nbf)")


def load_verifier(settings: JWTSettings) -> Verifier:
    """A :class:`Verifier` for the configured key; ValueError when the key is unusable."""
    return Verifier(settings)
