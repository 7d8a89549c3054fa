//! Bearer-token authentication, with admin RPCs authorised by a separate token.
//!
//! Checked at the top of every RPC (not in an interceptor) so each handler states the role it needs
//! and the failure maps to UNAUTHENTICATED (no or a wrong token) or PERMISSION_DENIED (a valid
//! token without admin rights, or admin RPCs disabled).

use tonic::metadata::MetadataMap;

use crate::error::{Error, Result};

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Auth {
    api_key: Option<String>,
    admin_key: Option<String>,
}

/// Who an RPC is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Scoring, classification and model listing.
    User,
    /// LoadModel / UnloadModel.
    Admin,
}

impl Auth {
    pub fn new(api_key: Option<String>, admin_key: Option<String>) -> Self {
        let nonempty = |k: Option<String>| k.filter(|k| !k.is_empty());
        Auth {
            api_key: nonempty(api_key),
            admin_key: nonempty(admin_key),
        }
    }

    /// Allow or refuse a call carrying `md` that needs `role`.
    pub fn check(&self, md: &MetadataMap, role: Role) -> Result<()> {
        let token = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| {
                s.strip_prefix("Bearer ")
                    .or_else(|| s.strip_prefix("bearer "))
            })
            .map(str::trim);
        let is = |k: &Option<String>, t: &str| k.as_deref().is_some_and(|k| same(k, t));
        match role {
            Role::User => match (&self.api_key, token) {
                (None, _) => Ok(()),
                (Some(_), None) => Err(Error::Unauthenticated(
                    "missing 'authorization: Bearer <token>' metadata".into(),
                )),
                (Some(_), Some(t)) if is(&self.api_key, t) || is(&self.admin_key, t) => Ok(()),
                (Some(_), Some(_)) => Err(Error::Unauthenticated("wrong bearer token".into())),
            },
            Role::Admin => match (&self.admin_key, token) {
                (None, _) => Err(Error::PermissionDenied(
                    "admin RPCs are disabled (no admin_key configured)".into(),
                )),
                (Some(_), None) => Err(Error::Unauthenticated(
                    "missing 'authorization: Bearer <admin token>' metadata".into(),
                )),
                (Some(_), Some(t)) if is(&self.admin_key, t) => Ok(()),
                (Some(_), Some(t)) if is(&self.api_key, t) || self.api_key.is_none() => Err(
                    Error::PermissionDenied("this token may not call admin RPCs".into()),
                ),
                (Some(_), Some(_)) => Err(Error::Unauthenticated("wrong bearer token".into())),
            },
        }
    }
}

/// Constant-time token equality: both sides are hashed first, so neither the first differing
/// byte nor the token's length shows in the time taken, then the digests are compared without an
/// early exit.
fn same(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(token: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(t) = token {
            m.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        m
    }

    #[test]
    fn roles_are_separate() {
        let a = Auth::new(Some("user".into()), Some("admin".into()));
        assert!(a.check(&md(Some("user")), Role::User).is_ok());
        assert!(a.check(&md(Some("admin")), Role::User).is_ok());
        assert!(matches!(
            a.check(&md(None), Role::User),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            a.check(&md(Some("nope")), Role::User),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            a.check(&md(Some("user")), Role::Admin),
            Err(Error::PermissionDenied(_))
        ));
        assert!(a.check(&md(Some("admin")), Role::Admin).is_ok());
        let open = Auth::new(None, None);
        assert!(open.check(&md(None), Role::User).is_ok());
        assert!(matches!(
            open.check(&md(None), Role::Admin),
            Err(Error::PermissionDenied(_))
        ));
    }

    #[test]
    fn tokens_compare_by_content_only() {
        assert!(same("sesame", "sesame"));
        assert!(!same("sesame", "sesamf"));
        assert!(!same("sesame", "sesame "));
        assert!(!same("", "x"));
        assert!(same("", ""));
    }
}
