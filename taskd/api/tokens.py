"""JSON Web Tokens (Nodeum's `JWT` scheme): `Authorization: Bearer <JWT>`, verified with
pyjwt against the issuers of `[[api.jwt]]`.

A token is accepted when its `iss` names a configured issuer and, with that issuer's key and
algorithm only (HS256 for a `secret_file`, RS256 or ES256 for a `public_key_file`, told by
the key's type), its signature holds, `aud` holds the issuer's audience, `exp` is in the
future and `nbf` / `iat` are not (each within `leeway_sec`). `sub` is the principal; the
`scope` claim (space-separated) gives its scopes, intersected with the issuer's `scopes`.

A refusal says why (expired, not valid yet, wrong audience, wrong issuer, algorithm not
accepted, bad signature, a claim missing, malformed), never which issuer or key was tried.
An algorithm is never taken from the token: `alg: none`, or an HS256 token "signed" with an
issuer's RSA public key as the secret, fail as "algorithm not accepted".

Verifying costs microseconds (HS256) to some tens of microseconds (RS256, ES256) of CPU, see
bench/README: done on the event loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from taskd.errors import FieldError, ValidationError
from taskd.settings import JwtIssuer

__all__ = [
    "MIN_SECRET_BYTES",
    "TokenIssuer",
    "TokenRefused",
    "load_issuers",
    "looks_like_jwt",
    "verify",
]

# RFC 7518, 3.2: an HS256 key is at least as long as the hash (pyjwt warns below that).
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048
# Longer `sub` values are refused: the name is shown as a task's owner and stored with it.
MAX_SUBJECT_CHARS = 255
# Tokens longer than this are refused before any parsing (headers are bounded anyway).
MAX_TOKEN_CHARS = 8192
_REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]


class TokenRefused(ValueError):
    """A token that is no valid credential; `str()` says why, for the 401's body."""


@dataclass(frozen=True, slots=True)
class TokenIssuer:
    """One configured issuer, its key loaded."""

    issuer: str
    audience: str
    algorithm: str
    key: Any  # bytes (HS256) or a cryptography public key
    leeway_sec: float
    scopes: frozenset[str]


def looks_like_jwt(token: str) -> bool:
    """Whether `token` has a JWT's form (three dot-separated parts), so a refusal can speak
    of a token rather than of an API key."""
    # A JWT is ASCII (base64url and dots); a header's undecodable bytes arrive as surrogates.
    return token.isascii() and token.count(".") == 2 and len(token) <= MAX_TOKEN_CHARS


def load_issuers(issuers: Iterable[JwtIssuer]) -> list[TokenIssuer]:
    """Read the keys `[[api.jwt]]` names. Raises ValidationError naming each bad file."""
    loaded, errors = [], []
    for index, issuer in enumerate(issuers):
        try:
            if issuer.secret_file is not None:
                algorithm, key = "HS256", _read_secret(issuer.secret_file)
            else:
                assert issuer.public_key_file is not None
                algorithm, key = _read_public_key(issuer.public_key_file)
        except ValueError as error:
            field = "secret_file" if issuer.secret_file is not None else "public_key_file"
            errors.append(FieldError(f"api.jwt[{index}].{field}", str(error)))
            continue
        loaded.append(
            TokenIssuer(
                issuer.issuer, issuer.audience, algorithm, key, issuer.leeway_sec, issuer.scopes
            )
        )
    if errors:
        raise ValidationError(errors)
    return loaded


def verify(token: str, issuers: dict[str, TokenIssuer]) -> tuple[str, TokenIssuer, set[str]]:
    """Check `token`; return its subject, its issuer and the scopes its `scope` claim names.

    Raises TokenRefused saying why it is refused.
    """
    if not looks_like_jwt(token):
        raise TokenRefused("the token is malformed")
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenRefused("the token is malformed") from None
    named = unverified.get("iss")
    issuer = issuers.get(named) if isinstance(named, str) else None
    if issuer is None:
        raise TokenRefused("the token's issuer (iss) is not accepted")
    try:
        claims = jwt.decode(
            token,
            issuer.key,
            algorithms=[issuer.algorithm],
            audience=issuer.audience,
            issuer=issuer.issuer,
            leeway=issuer.leeway_sec,
            options={"require": _REQUIRED_CLAIMS},
        )
    except jwt.PyJWTError as error:
        raise TokenRefused(_reason(error)) from None
    subject = claims.get("sub")
    if (
        not isinstance(subject, str)
        or not subject
        or len(subject) > MAX_SUBJECT_CHARS
        or not subject.isprintable()
    ):
        raise TokenRefused(
            f"the token's subject (sub) must be 1 to {MAX_SUBJECT_CHARS} printable characters"
        )
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise TokenRefused("the token's scope claim must be a string of space-separated scopes")
    return subject, issuer, set(scope.split())


def _reason(error: jwt.PyJWTError) -> str:
    """What a 401 says about a token pyjwt refused (no key, no issuer named)."""
    match error:
        case jwt.ExpiredSignatureError():
            return "the token has expired (exp)"
        case jwt.ImmatureSignatureError():
            return "the token is not valid yet (nbf or iat in the future)"
        case jwt.InvalidAudienceError():
            return "the token's audience (aud) is not accepted"
        case jwt.InvalidIssuerError():
            return "the token's issuer (iss) is not accepted"
        case jwt.InvalidAlgorithmError():
            return "the token's algorithm (alg) is not accepted"
        case jwt.InvalidSignatureError():
            return "the token's signature is not valid"
        case jwt.MissingRequiredClaimError():
            return f"the token lacks the claim {error.claim!r}"
        case jwt.InvalidIssuedAtError():
            return "the token's issued-at time (iat) is not valid"
        case _:
            return "the token is malformed"


def _read_secret(path: Path) -> bytes:
    try:
        secret = path.read_bytes().strip()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the secret in {path} is shorter than {MIN_SECRET_BYTES} bytes (HS256 needs at "
            f"least 256 bits: e.g. 'taskd gen-key > {path.name}')"
        )
    return secret


def _read_public_key(path: Path) -> tuple[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    if b"PRIVATE KEY" in data:
        raise ValueError(f"{path} holds a private key: give the issuer's public key only")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ValueError(f"{path} is not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"the RSA key in {path} has {key.key_size} bits; at least 2048")
        return "RS256", key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256", key
    raise ValueError(f"{path} must hold an RSA (RS256) or P-256 EC (ES256) public key")
