//! Who may use the admin listener (`server.admin_auth`): peers from the allowed networks, with
//! the bearer token when one is set. `/healthz` and `/readyz` stay open to every peer, so that
//! probes need no secret. A publish (`/publish/...`) is judged by its route's own
//! `publish.token` when it has one, and by the admin token otherwise (see `server::publish`).

use crate::config::AdminAuth;
use std::net::IpAddr;

/// Why a request to the admin listener is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer is outside `allow` (403).
    Address,
    /// No token, or the wrong one (401 with `WWW-Authenticate: Bearer`).
    Token,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Address => "address",
            Refusal::Token => "token",
        }
    }
}

/// Whether a request for `path` from `peer`, with this `Authorization` value, is served.
pub fn admit(
    auth: &AdminAuth,
    path: &str,
    peer: Option<IpAddr>,
    authorization: Option<&[u8]>,
) -> Result<(), Refusal> {
    if matches!(path, "/healthz" | "/readyz") {
        return Ok(());
    }
    if !auth.allows(peer) {
        return Err(Refusal::Address);
    }
    if path.starts_with("/publish/") {
        return Ok(());
    }
    match &auth.token {
        Some(token) if !same_secret(bearer(authorization), token.as_bytes()) => Err(Refusal::Token),
        _ => Ok(()),
    }
}

/// The credentials of `Authorization: Bearer <token>` (empty when absent or of another scheme).
pub fn bearer(authorization: Option<&[u8]>) -> &[u8] {
    authorization
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .unwrap_or(b"")
}

/// Compares a given secret with the expected one in time that depends only on their lengths.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cidr;

    fn auth(token: Option<&str>, allow: &[&str]) -> AdminAuth {
        AdminAuth {
            token: token.map(Into::into),
            allow: allow.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
        }
    }

    #[test]
    fn probes_pass_addresses_then_tokens_are_checked() {
        let a = auth(Some("s3cret"), &["10.0.0.0/8"]);
        let inside = Some("10.1.2.3".parse().unwrap());
        let outside = Some("192.0.2.1".parse().unwrap());
        assert_eq!(admit(&a, "/healthz", outside, None), Ok(()));
        assert_eq!(admit(&a, "/readyz", None, None), Ok(()));
        assert_eq!(
            admit(&a, "/metrics", outside, Some(b"Bearer s3cret")),
            Err(Refusal::Address)
        );
        assert_eq!(admit(&a, "/metrics", inside, None), Err(Refusal::Token));
        assert_eq!(
            admit(&a, "/metrics", inside, Some(b"Bearer s3cre")),
            Err(Refusal::Token)
        );
        assert_eq!(
            admit(&a, "/metrics", inside, Some(b"Basic s3cret")),
            Err(Refusal::Token)
        );
        assert_eq!(
            admit(&a, "/metrics", inside, Some(b"Bearer s3cret")),
            Ok(())
        );
        assert_eq!(
            admit(&a, "/publish/feed", inside, None),
            Ok(()),
            "publish checks its own"
        );
        assert_eq!(
            admit(&a, "/publish/feed", outside, None),
            Err(Refusal::Address)
        );
        assert_eq!(admit(&AdminAuth::default(), "/", None, None), Ok(()));
    }
}
