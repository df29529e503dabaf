"""CPU time per JWT verification (HS256, RS256, ES256), as the API does it on the event loop.

Measured with `time.thread_time` (CPU of this thread), so other load on the machine does not
inflate the figure. Decides whether verification may stay on the loop: the `no_blocking`
budget is 50 ms per callback, a verification costs a small fraction of a millisecond.

    .venv/bin/python bench/jwt_verify.py [--count N]
"""

from __future__ import annotations

import argparse
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from taskd.api.tokens import TokenIssuer, verify


def main() -> None:
    """Sign one token per algorithm, verify it `--count` times, print µs of CPU per check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="verifications per algorithm")
    count = parser.parse_args().count
    now = int(time.time())
    claims = {"iss": "i", "aud": "a", "sub": "s", "exp": now + 3600, "scope": "tasks/*"}
    secret = b"s" * 32
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    cases = [
        ("HS256", secret, secret),
        ("RS256", rsa_key, rsa_key.public_key()),
        ("ES256", ec_key, ec_key.public_key()),
    ]
    print(f"verifications per algorithm: {count}")
    for algorithm, signing_key, verifying_key in cases:
        token = jwt.encode(claims, signing_key, algorithm=algorithm)
        issuers = {"i": TokenIssuer("i", "a", algorithm, verifying_key, 0.0, frozenset({"*"}))}
        start = time.thread_time()
        for _ in range(count):
            verify(token, issuers)
        per_check = (time.thread_time() - start) / count * 1e6
        print(f"{algorithm}: {per_check:.0f} µs CPU per verification")


if __name__ == "__main__":
    main()
