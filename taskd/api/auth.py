"""Who may call the API, and what they may do.

Credentials: API keys (`Authorization: <key>` or `Authorization: Bearer <key>`), read from
the files the config names, never from the config itself; Basic auth for configured users,
whose passwords are stored as scrypt hashes (`taskd hash-password`); and JSON Web Tokens
(`Authorization: Bearer <JWT>`) of the issuers `[[api.jwt]]` names (see `tokens.py`). Keys
and hashes are compared in constant time, and every key is compared, so the time taken does
not tell which key nearly matched.

Scopes follow the Nodeum API: `tasks/index`, `tasks/show`, `tasks/create`, `tasks/update`,
`tasks/destroy`, `tasks/action`, `tasks/run_defer`, with `tasks/*` and `*` as wildcards;
`metrics`, for a Prometheus scraper's key (`GET /metrics`; `tasks/index` reads it too); and
`admin` (also granted by `*`): may list every owner's tasks (`all=true`) and act on them.
No credentials: 401. Credentials without the route's scope: 403. The Unix socket may be
trusted (its file mode guards it): then it needs no credentials.

A password check (scrypt, ~50-100 ms of CPU) never runs on the event loop: at most
`PASSWORD_CHECKS` run at once, in threads; others wait their turn (their number is bounded
by the API's in-flight cap and the per-address limit on failed logins). A successful Basic
check is remembered for `CACHE_TTL_SEC` under the SHA-256 of the header (never the header
itself), at most `CACHE_SIZE` entries (the oldest go first); failures are never cached.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from taskd.api.tokens import TokenIssuer, TokenRefused, load_issuers, looks_like_jwt, verify
from taskd.errors import FieldError, ValidationError
from taskd.settings import ApiSettings

__all__ = [
    "ADMIN_SCOPE",
    "UNIX_SOCKET_PRINCIPAL",
    "Authenticator",
    "Principal",
    "TokenRefused",
    "check_password_hash",
    "hash_password",
    "new_key",
    "verify_password",
]

# scrypt parameters for new hashes: about 50 ms and 16 MiB on a server core.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_HASH_PREFIX = "scrypt"

# scrypt runs at once, in threads (each takes 16 MiB): at most 2, and one core is always
# left to the event loop (with two scrypt threads on two cores the loop waited 60 ms).
PASSWORD_CHECKS = max(1, min(2, (os.cpu_count() or 1) - 1))
CACHE_TTL_SEC = 60.0
CACHE_SIZE = 1024


ADMIN_SCOPE = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for, and what it may do."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """Whether `scope` (`controller/action`) is granted, wildcards included."""
        controller = scope.split("/", 1)[0]
        return bool({"*", f"{controller}/*", scope} & self.scopes)

    @property
    def is_admin(self) -> bool:
        """Whether it may see and act on every owner's tasks (the scope `admin`, or `*`)."""
        return self.allows(ADMIN_SCOPE)


def intersect_scopes(granted: frozenset[str], asked: Iterable[str]) -> frozenset[str]:
    """The scopes both `granted` and `asked` allow, wildcards understood on both sides:
    `tasks/*` and `tasks/show` give `tasks/show`; `*` and `tasks/*` give `tasks/*`."""
    asked_set = frozenset(asked)
    grant, ask = Principal("", granted), Principal("", asked_set)
    return frozenset(
        {s for s in asked_set if grant.allows(s)} | {s for s in granted if ask.allows(s)}
    )


UNIX_SOCKET_PRINCIPAL = Principal("unix-socket", frozenset({"*"}))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """Return a storable scrypt hash of `password`: `scrypt$N$r$p$salt$hash` (base64)."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    encoded = [base64.b64encode(part).decode() for part in (salt, digest)]
    return "$".join([_HASH_PREFIX, str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P), *encoded])


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches a hash made by `hash_password` (constant-time compare)."""
    try:
        prefix, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if prefix != _HASH_PREFIX:
            return False
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        digest = hashlib.scrypt(
            password.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(digest, expected)


def check_password_hash(stored: str) -> str | None:
    """Return why `stored` is not a usable password hash, or None if it is."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _HASH_PREFIX:
        return "must be a hash made by 'taskd hash-password' (scrypt$N$r$p$salt$hash)"
    try:
        int(parts[1]), int(parts[2]), int(parts[3])
        base64.b64decode(parts[4], validate=True)
        base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        return "is not a well-formed scrypt hash"
    return None


def new_key() -> str:
    """Return a fresh random API key (for `taskd gen-key`)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class _Key:
    name: str
    secret: bytes
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class _User:
    name: str
    password_hash: str
    scopes: frozenset[str]


class Authenticator:
    """Checks the credentials of a request against the configured keys and users."""

    def __init__(
        self,
        keys: Iterable[_Key],
        users: Iterable[_User],
        issuers: Iterable[TokenIssuer] = (),
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = tuple(keys)
        self._users = {user.name: user for user in users}
        self._issuers = {issuer.issuer: issuer for issuer in issuers}
        self._monotonic = monotonic
        self._checks = asyncio.Semaphore(PASSWORD_CHECKS)
        # sha256(header) -> (principal, expiry on the monotonic clock), oldest first.
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self.password_checks = 0  # how many scrypt checks ran (for tests and metrics)

    def take_credentials(self, other: Authenticator) -> None:
        """Check requests against `other`'s keys and users from now on (a config reload).

        The app holds this object (under its `AUTH` key, frozen once it serves), so a
        reload changes what it checks against in place: a revoked key or user is refused
        from the next request on. Anything remembered about the old credentials must be
        forgotten here too.
        """
        self._keys = other._keys
        self._users = other._users
        self._issuers = other._issuers
        self._cache.clear()  # a revoked user's cached check must not outlive the reload

    @property
    def has_credentials(self) -> bool:
        """Whether any key, user or JWT issuer is configured (without one, TCP serves
        health only)."""
        return bool(self._keys or self._users or self._issuers)

    @classmethod
    def from_settings(cls, api: ApiSettings) -> Authenticator:
        """Read the key files named in the config. Raises ValidationError naming the file."""
        keys, errors = [], []
        for index, ref in enumerate(api.keys):
            path = f"api.keys[{index}].key_file"
            try:
                secret = _read_key(ref.key_file)
            except ValueError as error:
                errors.append(FieldError(path, str(error)))
                continue
            keys.append(_Key(ref.name, secret, frozenset(ref.scopes)))
        users = []
        for index, user in enumerate(api.users):
            problem = check_password_hash(user.password_hash)
            if problem:
                errors.append(FieldError(f"api.users[{index}].password_hash", problem))
            users.append(_User(user.name, user.password_hash, frozenset(user.scopes)))
        issuers: list[TokenIssuer] = []
        try:
            issuers = load_issuers(api.jwt)
        except ValidationError as error:
            errors.extend(error.errors)
        if errors:
            raise ValidationError(errors)
        return cls(keys, users, issuers)

    async def authenticate(self, authorization: str | None) -> Principal | None:
        """Return the principal the `Authorization` header names, or None if it names none.

        Keys are compared on the loop (microseconds); Basic credentials in a thread, unless
        the same header succeeded less than `CACHE_TTL_SEC` ago; a bearer value that is no
        key but has a JWT's form is verified as a token, on the loop (tens of microseconds).
        Raises TokenRefused, saying why, for a token that is not valid.
        """
        if not authorization:
            return None
        scheme, _, rest = authorization.strip().partition(" ")
        if scheme.lower() == "basic" and rest:
            return await self._basic_cached(authorization, rest.strip())
        candidate = rest.strip() if scheme.lower() == "bearer" and rest else authorization.strip()
        # aiohttp decodes header bytes that are not UTF-8 with surrogateescape; this turns
        # them back into the bytes sent (a plain encode() would raise on them).
        found = self._key(candidate.encode("utf-8", "surrogateescape"))
        bearer = scheme.lower() == "bearer" and bool(rest)
        if found is None and self._issuers and bearer and looks_like_jwt(candidate):
            return self._token(candidate)
        return found

    def _token(self, token: str) -> Principal:
        subject, issuer, asked = verify(token, self._issuers)
        return Principal(subject, intersect_scopes(issuer.scopes, asked))

    def _key(self, candidate: bytes) -> Principal | None:
        found: _Key | None = None
        for key in self._keys:  # no early exit: every key costs the same
            if hmac.compare_digest(key.secret, candidate):
                found = key
        return None if found is None else Principal(found.name, found.scopes)

    async def _basic_cached(self, header: str, encoded: str) -> Principal | None:
        digest = hashlib.sha256(header.encode("utf-8", "surrogateescape")).digest()
        now = self._monotonic()
        cached = self._cache.get(digest)
        if cached is not None:
            if cached[1] > now:
                return cached[0]
            del self._cache[digest]
        async with self._checks:
            self.password_checks += 1
            found = await asyncio.to_thread(self._basic, encoded)
        if found is not None:
            self._cache[digest] = (found, self._monotonic() + CACHE_TTL_SEC)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return found

    def _basic(self, encoded: str) -> Principal | None:
        try:
            name, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        user = self._users.get(name)
        if user is None:
            # Spend the same time as for a real user, so names cannot be probed.
            verify_password(password, _dummy_hash())
            return None
        if not verify_password(password, user.password_hash):
            return None
        return Principal(user.name, user.scopes)


def _read_key(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if len(text) < 16:
        raise ValueError(f"the key in {path} is shorter than 16 characters")
    return text.encode()


@functools.cache
def _dummy_hash() -> str:
    return hash_password("taskd-dummy", salt=b"taskd-dummy-salt")
