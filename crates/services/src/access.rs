//! Authorization as a use case: load what a request acts on, then ask the
//! domain ([`certflow_core::access`]) whether the caller may — so the console
//! API and the pages answer an unknown id and another team's certificate
//! alike.

use certflow_core::access::{Permission, Principal};
use certflow_core::model::Certificate;
use certflow_core::{DomainError, DomainResult};
use uuid::Uuid;

use crate::Services;

impl Services {
    /// The certificate `id`, if `principal` may act on it with `permission`:
    /// `NotFound` for an unknown id (whoever asks), `Forbidden` for another
    /// team's certificate ([`Principal::authorize_certificate`]).
    pub async fn certificate_for(
        &self,
        principal: &Principal,
        permission: Permission,
        id: Uuid,
    ) -> DomainResult<Certificate> {
        let certificate = self
            .store
            .get_certificate(id)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("certificate {id}")))?;
        principal.authorize_certificate(permission, &certificate)?;
        Ok(certificate)
    }
}
