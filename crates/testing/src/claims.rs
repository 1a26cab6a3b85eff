//! Requests carrying a claims envelope sealed as the gateway seals it.

use std::time::{Duration, SystemTime};

use soma_auth::ClaimsSigner;
use soma_identity::SpiffeId;

/// Signed claims for `tenant` with `capabilities`, addressed to `audience`,
/// as the gateway forwards them.
pub fn tenant_request<T>(
    signer: &ClaimsSigner,
    audience: &SpiffeId,
    tenant: &str,
    capabilities: &[&str],
    message: T,
) -> tonic::Request<T> {
    sealed_request(signer, audience, tenant, capabilities, false, message)
}

/// Like [`tenant_request`], but the claims of an operator: what the
/// gateway seals for a token of an operator issuer with `"operator": true`.
pub fn operator_claims_request<T>(
    signer: &ClaimsSigner,
    audience: &SpiffeId,
    tenant: &str,
    capabilities: &[&str],
    message: T,
) -> tonic::Request<T> {
    sealed_request(signer, audience, tenant, capabilities, true, message)
}

/// A request carrying exactly `claims`, sealed for `audience` as the
/// gateway seals them (the envelope's audience, times and key id set here).
pub fn claims_request<T>(
    signer: &ClaimsSigner,
    audience: &SpiffeId,
    claims: soma_proto::v1::VerifiedClaims,
    message: T,
) -> tonic::Request<T> {
    let signed = signer
        .sign(claims, audience, Duration::from_secs(30), SystemTime::now())
        .unwrap();
    let mut request = tonic::Request::new(message);
    signed.insert_into(request.metadata_mut());
    request
}

fn sealed_request<T>(
    signer: &ClaimsSigner,
    audience: &SpiffeId,
    tenant: &str,
    capabilities: &[&str],
    operator: bool,
    message: T,
) -> tonic::Request<T> {
    let claims = soma_proto::v1::VerifiedClaims {
        tenant: tenant.to_owned(),
        subject: format!("user@{tenant}"),
        region: "local".to_owned(),
        capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
        mfa: true,
        request_id: "test".to_owned(),
        operator,
        ..Default::default()
    };
    claims_request(signer, audience, claims, message)
}
