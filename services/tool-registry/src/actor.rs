//! Who acts on the registry, from the verified caller.

use soma_mesh::Caller;

/// Who acts, as the registry records it.
#[derive(Clone, Debug)]
pub struct Actor {
    /// The verified claims' subject, else the caller's SPIFFE ID.
    pub id: String,
    /// The verified claims' tenant; empty without claims.
    pub tenant: String,
    /// Whether the call carries the gateway's verified tenant claims.
    pub tenant_claims: bool,
    /// Whether the caller is an operator (an operator SVID, or claims
    /// sealed as an operator's).
    pub operator: bool,
    /// Request id, for correlation.
    pub request_id: String,
    /// The moderation decision that admitted the request, from the
    /// verified claims; empty without one.
    pub moderation_decision_id: String,
}

impl Actor {
    /// The actor of a verified caller.
    pub fn of(caller: &Caller) -> Self {
        match &caller.claims {
            Some(claims) => Self {
                id: if claims.subject.is_empty() {
                    caller.peer.spiffe_id.to_string()
                } else {
                    claims.subject.clone()
                },
                tenant: claims.tenant.clone(),
                tenant_claims: true,
                operator: caller.is_operator(),
                request_id: claims.request_id.clone(),
                moderation_decision_id: claims.moderation_decision_id.clone(),
            },
            None => Self {
                operator: caller.is_operator(),
                ..Self::service(caller.peer.spiffe_id.to_string())
            },
        }
    }

    /// An actor with no tenant claims (an operator's SVID, the CLI).
    pub fn service(id: String) -> Self {
        Self {
            id,
            tenant: String::new(),
            tenant_claims: false,
            operator: false,
            request_id: String::new(),
            moderation_decision_id: String::new(),
        }
    }
}
