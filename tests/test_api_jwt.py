"""JSON Web Tokens (`Authorization: Bearer <JWT>`) against `[[api.jwt]]` issuers, over real
HTTP. Every key and token is made in the test (cryptography, pyjwt); nothing is mocked.

Three issuers: `hs` (HS256, a secret file), `rs` (RS256, a public key file) and `es` (ES256).
Each refusal is a 401 whose body says why, and never which issuer or key was tried.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from api_fixtures import Api, open_api
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from taskd.api.auth import Authenticator, intersect_scopes
from taskd.config import parse_config
from taskd.daemon import StartRefused, preflight
from taskd.errors import ValidationError
from taskd.modules.registry import ModuleRegistry

AUDIENCE = "taskd-test"


@dataclass(frozen=True)
class Keys:
    """The signing keys of the test's issuers, and the RSA public key's PEM bytes."""

    secret: bytes
    rsa_private: rsa.RSAPrivateKey
    rsa_public_pem: bytes
    ec_private: ec.EllipticCurvePrivateKey


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_issuers(tmp_path: Path) -> tuple[Keys, list[dict[str, Any]]]:
    """Make the keys, write the secret and public key files, return the `jwt` entries."""
    keys = Keys(
        secret=secrets.token_urlsafe(48).encode(),
        rsa_private=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa_public_pem=b"",
        ec_private=ec.generate_private_key(ec.SECP256R1()),
    )
    keys = Keys(keys.secret, keys.rsa_private, _public_pem(keys.rsa_private), keys.ec_private)
    (tmp_path / "jwt").mkdir()
    (tmp_path / "jwt" / "hs.secret").write_bytes(keys.secret + b"\n")
    (tmp_path / "jwt" / "hs.secret").chmod(0o600)
    (tmp_path / "jwt" / "rs.pem").write_bytes(keys.rsa_public_pem)
    (tmp_path / "jwt" / "es.pem").write_bytes(_public_pem(keys.ec_private))
    issuers = [
        {
            "issuer": "https://hs.example",
            "audience": AUDIENCE,
            "secret_file": "jwt/hs.secret",
            "scopes": ["tasks/*"],
        },
        {
            "issuer": "https://rs.example",
            "audience": AUDIENCE,
            "public_key_file": "jwt/rs.pem",
            "leeway_sec": 30,
            "scopes": ["tasks/index", "tasks/show", "admin"],
        },
        {
            "issuer": "https://es.example",
            "audience": AUDIENCE,
            "public_key_file": "jwt/es.pem",
            "scopes": ["*"],
        },
    ]
    return keys, issuers


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Api, Keys]]:
    """A live API with the three issuers beside the usual keys (made in a thread: an RSA
    key takes a while, and `no_blocking` watches the loop during set-up)."""
    keys, issuers = await asyncio.to_thread(write_issuers, tmp_path)
    async with open_api(tmp_path, api_options={"jwt": issuers}) as api:
        yield api, keys
        assert not api.failures()


def claims(issuer: str, **extra: Any) -> dict[str, Any]:
    """Valid claims for `issuer` (`hs`, `rs`, `es`), valid for ten minutes."""
    now = int(time.time())
    base = {
        "iss": f"https://{issuer}.example",
        "aud": AUDIENCE,
        "sub": "carol",
        "iat": now,
        "exp": now + 600,
        "scope": "tasks/index tasks/show tasks/create",
    }
    return {**base, **extra}


def sign(keys: Keys, issuer: str, body: Mapping[str, Any]) -> str:
    """A token for `body`, signed the way `issuer` signs."""
    if issuer == "hs":
        return jwt.encode(dict(body), keys.secret, algorithm="HS256")
    if issuer == "rs":
        return jwt.encode(dict(body), keys.rsa_private, algorithm="RS256")
    return jwt.encode(dict(body), keys.ec_private, algorithm="ES256")


def unsigned(body: Mapping[str, Any], header: Mapping[str, Any]) -> str:
    """A token with `header` and no signature (`alg: none`), built by hand."""

    def part(value: Mapping[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(body)}."


async def refusal(api: Api, token: str) -> str:
    """The reason a v2 request with `token` is refused (asserting a 401 in both dialects)."""
    client = await api.tcp(None, authorization=f"Bearer {token}")
    v2 = await client.get("/api/v2/tasks")
    assert v2.status == 401, v2
    v1 = await client.get("/api/v1/task")
    assert v1.status == 401, v1
    assert v1.json["description"] == v2.json["messages"][0]
    reason: str = v2.json["messages"][0]
    return reason


async def test_each_issuers_tokens_are_accepted_with_sub_as_the_principal(
    no_blocking: None, served: tuple[Api, Keys]
) -> None:
    """HS256, RS256 and ES256 tokens work; `sub` is who created the task; verifying them
    on the loop never holds it (`no_blocking`)."""
    api, keys = served
    for issuer in ("hs", "rs", "es"):
        client = await api.tcp(None, authorization=f"Bearer {sign(keys, issuer, claims(issuer))}")
        listed = await client.get("/api/v2/tasks")
        assert listed.status == 200, (issuer, listed)
    creator = await api.tcp(None, authorization=f"Bearer {sign(keys, 'hs', claims('hs'))}")
    body = {"name": "by-jwt", "task_module": "sleep", "task_params": {"seconds": 0}}
    created = await creator.post("/api/v2/tasks", body)
    assert created.status == 201, created
    assert (created.json["created_by"], created.json["user"]) == ("carol", "carol")


async def test_scopes_are_the_claim_intersected_with_the_issuers(
    served: tuple[Api, Keys],
) -> None:
    """`rs` allows index and show only: its token asking for tasks/create cannot create; a
    token without the show scope cannot show; the `*` issuer grants what the claim asks."""
    api, keys = served
    body = {"name": "nope", "task_module": "sleep", "task_params": {"seconds": 0}}
    rs = await api.tcp(None, authorization=f"Bearer {sign(keys, 'rs', claims('rs'))}")
    assert (await rs.post("/api/v2/tasks", body)).status == 403
    assert (await rs.get("/api/v2/tasks")).status == 200
    index_only = sign(keys, "es", claims("es", scope="tasks/index"))
    client = await api.tcp(None, authorization=f"Bearer {index_only}")
    assert (await client.get("/api/v2/tasks")).status == 200
    assert (await client.post("/api/v2/schedules/preview", {"schedules": []})).status == 403
    no_scope = {k: v for k, v in claims("es").items() if k != "scope"}
    client = await api.tcp(None, authorization=f"Bearer {sign(keys, 'es', no_scope)}")
    assert (await client.get("/api/v2/tasks")).status == 403


def test_scope_intersection_understands_wildcards_on_both_sides() -> None:
    """A wildcard on either side gives the narrower scope; unknown names give nothing."""
    assert intersect_scopes(frozenset({"tasks/*"}), ["tasks/show", "metrics"]) == {"tasks/show"}
    assert intersect_scopes(frozenset({"tasks/show"}), ["*"]) == {"tasks/show"}
    assert intersect_scopes(frozenset({"*"}), ["tasks/*", "admin"]) == {"tasks/*", "admin"}
    assert intersect_scopes(frozenset({"tasks/*"}), ["admin", "bogus"]) == frozenset()


@pytest.mark.parametrize(
    ("issuer", "changes", "reason"),
    [
        ("hs", {"exp": int(time.time()) - 60}, "the token has expired (exp)"),
        # rs grants 30 s of leeway: expired 60 s ago is still too late.
        ("rs", {"exp": int(time.time()) - 60}, "the token has expired (exp)"),
        ("hs", {"nbf": int(time.time()) + 600}, "the token is not valid yet (nbf or iat in the "
                                                "future)"),
        ("es", {"aud": "someone-else"}, "the token's audience (aud) is not accepted"),
        ("es", {"iss": "https://evil.example"}, "the token's issuer (iss) is not accepted"),
        ("hs", {"sub": ""}, "the token's subject (sub) must be 1 to 255 printable characters"),
        ("hs", {"scope": ["tasks/index"]}, "the token's scope claim must be a string of "
                                           "space-separated scopes"),
    ],
)  # fmt: skip
async def test_refusals_say_why(
    served: tuple[Api, Keys], issuer: str, changes: dict[str, Any], reason: str
) -> None:
    """Each invalid token is a 401 whose body says what is wrong with it."""
    api, keys = served
    assert await refusal(api, sign(keys, issuer, claims(issuer, **changes))) == reason


async def test_leeway_accepts_a_token_expired_within_it(served: tuple[Api, Keys]) -> None:
    """rs grants 30 s: a token expired 5 s ago still works there, not at hs (no leeway)."""
    api, keys = served
    late = {"exp": int(time.time()) - 5}
    client = await api.tcp(None, authorization=f"Bearer {sign(keys, 'rs', claims('rs', **late))}")
    assert (await client.get("/api/v2/tasks")).status == 200
    assert await refusal(api, sign(keys, "hs", claims("hs", **late))) == (
        "the token has expired (exp)"
    )


async def test_missing_claims_are_named(served: tuple[Api, Keys]) -> None:
    """exp, aud and sub are required."""
    api, keys = served
    for claim in ("exp", "aud", "sub"):
        body = {k: v for k, v in claims("hs").items() if k != claim}
        assert await refusal(api, sign(keys, "hs", body)) == f"the token lacks the claim {claim!r}"


async def test_algorithm_attacks_are_refused(served: tuple[Api, Keys]) -> None:
    """`alg: none`, an HS256 token keyed with the RS256 issuer's public key, and an RS256
    token presented to the HS256 issuer: all refused for their algorithm; a tampered
    signature is refused for its signature. No answer names a key or an issuer."""
    api, keys = served
    none_token = unsigned(claims("rs"), {"alg": "none", "typ": "JWT"})
    assert await refusal(api, none_token) == "the token's algorithm (alg) is not accepted"
    confused = unsigned(claims("rs"), {"alg": "HS256", "typ": "JWT"})
    signing_input = confused.rstrip(".")
    mac = hmac.new(keys.rsa_public_pem, signing_input.encode(), hashlib.sha256).digest()
    confused = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    assert await refusal(api, confused) == "the token's algorithm (alg) is not accepted"
    wrong_family = jwt.encode(claims("hs"), keys.rsa_private, algorithm="RS256")
    assert await refusal(api, wrong_family) == "the token's algorithm (alg) is not accepted"
    token = sign(keys, "es", claims("es"))
    head, _, signature = token.split(".")
    other = sign(keys, "es", claims("es", sub="mallory")).split(".")[1]
    assert await refusal(api, f"{head}.{other}.{signature}") == (
        "the token's signature is not valid"
    )
    for reason in [await refusal(api, none_token), await refusal(api, confused)]:
        assert "example" not in reason
        assert "pem" not in reason.lower()


async def test_malformed_tokens_and_wrong_keys_still_read_as_before(
    served: tuple[Api, Keys],
) -> None:
    """A dotted value that is no JWT is a malformed token; a value without dots is still a
    key that is not valid; the configured keys keep working beside the issuers."""
    api, _ = served
    assert await refusal(api, "a.b.c") == "the token is malformed"
    assert await refusal(api, "x" * 40) == "the API key is not valid"
    assert (await (await api.tcp("all")).get("/api/v2/tasks")).status == 200


async def test_a_reload_swaps_the_issuers(served: tuple[Api, Keys]) -> None:
    """`Daemon.reload` (what SIGHUP runs) re-reads [[api.jwt]]: an issuer the file no
    longer names is refused from the next request on; a rotated secret takes effect; a bad
    public key file refuses the reload whole (the issuers stay)."""
    api, keys = served
    assert api.daemon is not None
    api.config_path.chmod(0o600)
    for key_file in (api.tmp_path / "keys").iterdir():
        key_file.chmod(0o600)
    rs_token, es_token = sign(keys, "rs", claims("rs")), sign(keys, "es", claims("es"))
    text = api.config_path.read_text()
    [line] = [line for line in text.splitlines() if line.startswith("jwt = ")]
    without_rs = re.sub(r'\{ issuer = "https://rs\.example"[^}]*\}, ', "", line)
    assert without_rs != line
    api.config_path.write_text(text.replace(line, without_rs))
    rotated = secrets.token_urlsafe(48).encode()
    (api.tmp_path / "jwt" / "hs.secret").write_bytes(rotated)

    assert await api.daemon.reload()
    assert await refusal(api, rs_token) == "the token's issuer (iss) is not accepted"
    old_hs = sign(keys, "hs", claims("hs"))
    assert await refusal(api, old_hs) == "the token's signature is not valid"
    new_hs = jwt.encode(claims("hs"), rotated, algorithm="HS256")
    for token in (new_hs, es_token):
        client = await api.tcp(None, authorization=f"Bearer {token}")
        assert (await client.get("/api/v2/tasks")).status == 200

    (api.tmp_path / "jwt" / "es.pem").write_text("garbage\n")
    assert not await api.daemon.reload()
    client = await api.tcp(None, authorization=f"Bearer {es_token}")
    assert (await client.get("/api/v2/tasks")).status == 200, "the old issuers stay"


def test_config_checks_the_jwt_tables(tmp_path: Path) -> None:
    """[[api.jwt]]: required fields, one key file, scopes, leeway bounds, unique issuers,
    no inline secret; the key files are read and checked like API key files."""
    (tmp_path / "short").write_text("too short\n")
    (tmp_path / "private.pem").write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "junk.pem").write_text("not a key\n")
    text = f"""
[daemon]
state_dir = "{tmp_path}/state"

[[api.jwt]]
issuer = "a"
audience = "x"
scopes = ["tasks/*"]

[[api.jwt]]
issuer = "a"
audience = "x"
secret_file = "short"
public_key_file = "junk.pem"
leeway_sec = 99999
secret = "inline"
scopes = ["tasks/nope"]

[[api.jwt]]
audience = "x"
secret_file = "short"
scopes = ["*"]
"""
    with pytest.raises(ValidationError) as caught:
        parse_config(text, source="taskd.toml", base_dir=tmp_path)
    paths = sorted(e.path for e in caught.value.errors)
    assert paths == sorted(
        [
            "api.jwt[0].secret_file",
            "api.jwt[1].leeway_sec",
            "api.jwt[1].scopes[0]",
            "api.jwt[1].secret",
            "api.jwt[1].secret_file",
            "api.jwt[2].issuer",
        ]
    ), caught.value.errors
    twice = f"""
[daemon]
state_dir = "{tmp_path}/state"

[[api.jwt]]
issuer = "a"
audience = "x"
secret_file = "short"
scopes = ["tasks/*"]

[[api.jwt]]
issuer = "a"
audience = "y"
secret_file = "short"
scopes = ["tasks/*"]
"""
    with pytest.raises(ValidationError) as caught:
        parse_config(twice, source="taskd.toml", base_dir=tmp_path)
    [duplicate] = caught.value.errors
    assert duplicate.path == "api.jwt[1].issuer"
    assert "duplicate issuer 'a', also jwt[0]" in duplicate.reason
    good = f"""
[daemon]
state_dir = "{tmp_path}/state"

[[api.jwt]]
issuer = "a"
audience = "x"
secret_file = "short"
scopes = ["tasks/*"]

[[api.jwt]]
issuer = "b"
audience = "x"
public_key_file = "private.pem"
scopes = ["tasks/*"]

[[api.jwt]]
issuer = "c"
audience = "x"
public_key_file = "junk.pem"
scopes = ["tasks/*"]

[[api.jwt]]
issuer = "d"
audience = "x"
public_key_file = "missing.pem"
scopes = ["tasks/*"]
"""
    settings = parse_config(good, source="taskd.toml", base_dir=tmp_path)
    with pytest.raises(ValidationError) as caught:
        Authenticator.from_settings(settings.api)
    reasons = {e.path: e.reason for e in caught.value.errors}
    assert set(reasons) == {
        "api.jwt[0].secret_file",
        "api.jwt[1].public_key_file",
        "api.jwt[2].public_key_file",
        "api.jwt[3].public_key_file",
    }
    assert "shorter than 32 bytes" in reasons["api.jwt[0].secret_file"]
    assert "private key" in reasons["api.jwt[1].public_key_file"]
    assert "not a PEM public key" in reasons["api.jwt[2].public_key_file"]
    assert "cannot read" in reasons["api.jwt[3].public_key_file"]


@pytest.mark.parametrize(("name", "mode"), [("hs.secret", 0o644), ("rs.pem", 0o666)])
def test_start_refuses_a_jwt_file_others_may_read_or_write(
    tmp_path: Path, name: str, mode: int
) -> None:
    """A secret others may read, or a public key others may change (they could forge
    tokens), stops `taskd serve` before it starts, as an API key file would."""
    _, issuers = write_issuers(tmp_path)
    config = tmp_path / "taskd.toml"
    tables = "".join(
        "\n[[api.jwt]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in issuer.items())
        for issuer in issuers
    )
    config.write_text(f'[daemon]\nstate_dir = "state"\n\n[api]\nlisten = []\n{tables}')
    config.chmod(0o600)
    preflight(config, ModuleRegistry.builtin())  # as written: accepted
    (tmp_path / "jwt" / name).chmod(mode)
    with pytest.raises(StartRefused) as caught:
        preflight(config, ModuleRegistry.builtin())
    [(event, problem)] = caught.value.problems
    assert event == "unsafe file"
    assert name in problem.reason
