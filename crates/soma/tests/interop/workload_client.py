"""A py-spiffe workload, for the Workload API interop tests.

Uses py-spiffe with its default settings: the socket comes from
SPIFFE_ENDPOINT_SOCKET. Prints one JSON object on standard output.

    workload_client.py x509
        {"spiffe_id", "chain_len", "key_matches", "bundle_tds", "bundle_matches_svid_bundle",
         "authorities"}
    workload_client.py jwt AUDIENCE
        fetches a JWT-SVID for AUDIENCE, the JWT bundles, validates the token
        locally with py-spiffe (signature, aud, exp) and through ValidateJWTSVID:
        {"spiffe_id", "token", "audience", "kids", "local_spiffe_id", "remote_spiffe_id"}
    workload_client.py validate AUDIENCE TOKEN
        ValidateJWTSVID only: {"spiffe_id"}
    workload_client.py validate_local AUDIENCE TOKEN
        fetches the JWT bundles and validates TOKEN with py-spiffe alone:
        {"spiffe_id", "kids"}

Any Workload API error prints {"error": GRPC_CODE_NAME, "message": "..."}
and exits 3.
"""

import json
import sys

import grpc
from spiffe import WorkloadApiClient, JwtSvid


def rpc_error(e):
    cause = e
    while cause is not None and not isinstance(cause, grpc.Call):
        cause = cause.__cause__
    if cause is None:
        return {"error": type(e).__name__, "message": str(e)}
    return {"error": cause.code().name, "message": cause.details()}


def x509(client):
    ctx = client.fetch_x509_context(timeout=20)
    svid = ctx.default_svid
    bundles = client.fetch_x509_bundles(timeout=20)
    td = svid.spiffe_id.trust_domain
    bundle = bundles.get_bundle_for_trust_domain(td)
    return {
        "spiffe_id": str(svid.spiffe_id),
        "chain_len": len(svid.cert_chain),
        "key_matches": svid.private_key.public_key().public_numbers()
        == svid.leaf.public_key().public_numbers(),
        "bundle_tds": sorted(str(b.trust_domain) for b in bundles.bundles),
        "bundle_matches_svid_bundle": bundle.x509_authorities
        == ctx.x509_bundle_set.get_bundle_for_trust_domain(td).x509_authorities,
        "authorities": len(bundle.x509_authorities),
    }


def jwt(client, audience):
    svid = client.fetch_jwt_svid(audience={audience}, timeout=20)
    bundles = client.fetch_jwt_bundles(timeout=20)
    bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    local = JwtSvid.parse_and_validate(svid.token, bundle, {audience})
    remote = client.validate_jwt_svid(svid.token, audience, timeout=20)
    return {
        "spiffe_id": str(svid.spiffe_id),
        "token": svid.token,
        "audience": sorted(svid.audience),
        "kids": sorted(bundle.jwt_authorities.keys()),
        "local_spiffe_id": str(local.spiffe_id),
        "remote_spiffe_id": str(remote.spiffe_id),
    }


def validate_local(client, audience, token):
    bundles = client.fetch_jwt_bundles(timeout=20)
    svid = JwtSvid.parse_insecure(token, {audience})
    bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    local = JwtSvid.parse_and_validate(token, bundle, {audience})
    return {"spiffe_id": str(local.spiffe_id), "kids": sorted(bundle.jwt_authorities.keys())}


def validate(client, audience, token):
    svid = client.validate_jwt_svid(token, audience, timeout=20)
    return {"spiffe_id": str(svid.spiffe_id)}


def main():
    client = WorkloadApiClient()
    try:
        if sys.argv[1] == "x509":
            out = x509(client)
        elif sys.argv[1] == "jwt":
            out = jwt(client, sys.argv[2])
        elif sys.argv[1] == "validate_local":
            out = validate_local(client, sys.argv[2], sys.argv[3])
        elif sys.argv[1] == "validate":
            out = validate(client, sys.argv[2], sys.argv[3])
        else:
            raise SystemExit("unknown command " + sys.argv[1])
    except Exception as e:  # the test reads the code and message
        print(json.dumps(rpc_error(e)))
        sys.exit(3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
