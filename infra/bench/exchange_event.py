#!/usr/bin/env python3
"""A token-exchange event the exchange function can actually serve, for the cold-start bench.

Registers (with brokerctl apply, against the bench stack's moto) an issuer whose JWKS is a fresh
P-256 key given statically, a JWT target and a grant for one subject; then mints an ES256 subject
token with that key and writes the API Gateway event carrying it: the first invocation the bench
measures is a real exchange (policy loaded cold, the signing-key ring read, KMS Sign, the release
transaction), not a JWKS GET.

Usage: exchange_event.py BROKERCTL OUT.json   (environment: the stack's env file)
"""

import base64
import json
import subprocess
import sys
import tempfile
import time
import urllib.parse

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ISSUER = "https://idp.bench.example"
SUBJECT = "repo:bench-org/app:ref:refs/heads/main"
TARGET = "https://api.bench.example"


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main(argv):
    brokerctl, out = argv[0], argv[1]
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "bench",
           "x": b64(numbers.x.to_bytes(32, "big")), "y": b64(numbers.y.to_bytes(32, "big"))}
    approval = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
    manifest = {
        "issuers": [{"issuer": ISSUER, "name": "bench", "audiences": ["nhi-broker"],
                     "jwks": {"type": "static", "jwks": json.dumps({"keys": [jwk]})},
                     "algorithms": ["ES256"], "enabled": True}],
        "targets": [{"id": TARGET, "kind": "jwt", "environment": "prod", "owner": "bench", "enabled": True}],
        "grants": [{"id": "bench-grant", "issuer": ISSUER, "subject": SUBJECT, "environment": "prod",
                    "targets": [TARGET], "scopes": ["deploy"], "max_ttl_seconds": 900,
                    "approval_expires_at": approval, "owner": "bench", "justification": "cold-start bench"}],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(manifest, f)
        f.flush()
        subprocess.run([brokerctl, "apply", "--file", f.name, "--yes"], check=True, stdout=subprocess.DEVNULL)
    now = int(time.time())
    header = {"alg": "ES256", "typ": "JWT", "kid": "bench"}
    claims = {"iss": ISSUER, "sub": SUBJECT, "aud": "nhi-broker", "iat": now, "nbf": now, "exp": now + 3600,
              "jti": f"bench-{now}", "ref": "refs/heads/main", "repository": "bench-org/app"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    token = f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    form = urllib.parse.urlencode({
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "subject_token": token,
        "audience": TARGET,
        "scope": "deploy",
    })
    event = json.load(open("events/exchange-token-request.json"))
    event["body"] = base64.b64encode(form.encode()).decode()
    json.dump(event, open(out, "w"))


if __name__ == "__main__":
    main(sys.argv[1:])
