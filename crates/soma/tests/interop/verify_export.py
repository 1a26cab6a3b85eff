"""Verify a SomaStack Analytics export with Python's `cryptography`.

`cryptography` (OpenSSL's Ed25519) is an implementation independent of the
service's: a plain Ed25519 verify over the exported file's exact bytes
proves the signature is standard RFC 8032 Ed25519, with no prehash and no
framing. The document is then parsed with Python's own JSON parser.

Usage: verify_export.py FILE SIG KEY
  FILE  the exported bytes
  SIG   the 64-byte signature in standard base64
  KEY   the PEM SubjectPublicKeyInfo from ListVerificationKeys
Prints one JSON line {"valid", "kind", "tenant", "rows", "tree_size"} and
exits 0 when the signature verifies; prints {"valid": false} and exits 1
when it does not.
"""

import base64
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key


def main() -> int:
    path, sig_path, key_path = sys.argv[1:4]
    with open(path, "rb") as f:
        data = f.read()
    with open(sig_path, "rb") as f:
        signature = base64.b64decode(f.read().strip(), validate=True)
    with open(key_path, "rb") as f:
        key = load_pem_public_key(f.read())
    if not isinstance(key, Ed25519PublicKey):
        raise SystemExit(f"{key_path}: not an Ed25519 public key")
    try:
        key.verify(signature, data)
    except InvalidSignature:
        print(json.dumps({"valid": False}))
        return 1
    document = json.loads(data)
    print(
        json.dumps(
            {
                "valid": True,
                "kind": document["kind"],
                "tenant": document["tenant"],
                "rows": len(document["rows"]),
                "tree_size": document["checkpoint"]["tree_size"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
