//! [`AcmeStore`] written once for every [`Backend`]: the ACME server's EAB
//! keys, accounts, orders, authorizations, challenges, certificate origins
//! and nonces, so that any replica answers any ACME request.
//!
//! Every state transition is a conditional `UPDATE ... WHERE <expected
//! state> RETURNING`, so of two replicas racing exactly one moves the row and
//! the other learns it lost (`Conflict`, or `false`). A nonce is taken by
//! `DELETE ... RETURNING`: accepted once, whichever replica sees it. Due
//! challenges are claimed like renewal jobs: the rows are locked and skipped
//! by concurrent claimers (`SKIP LOCKED` on PostgreSQL; SQLite's write lock
//! serialises claimers), leased, and their attempt counted, so a worker's
//! outcome is recorded only while the challenge is still at its attempt.

use async_trait::async_trait;
use certflow_core::DomainError;
use certflow_core::acme::{
    AccountStatus, AcmeAccount, AcmeAuthorization, AcmeCertificate, AcmeChallenge, AcmeIdentifier,
    AcmeOrder, AcmePurge, AcmeStore, AuthzStatus, ChallengeStatus, ChallengeType, EabKey,
    IdentifierType, OrderStatus, ValidationOutcome,
};
use certflow_core::error::DomainResult;
use certflow_core::model::AuditEvent;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::insert_audit;
use crate::codec::{get_enum, get_json, get_opt_time, get_time, get_u32, get_uuid, id, secs};
use crate::error::{Violation, conflict, corrupt, map};
use crate::query::{Backend, Columns, Sql};
use crate::store::{SqlStore, execute, fetch_all, fetch_optional, total};

macro_rules! eab_columns {
    () => {
        "key_id, team, hmac_sealed, created_by, created_at, expires_at, revoked_at, account_id"
    };
}

macro_rules! account_columns {
    () => {
        "id, team, jwk, thumbprint, status, contact, eab_key_id, created_at, updated_at"
    };
}

macro_rules! order_columns {
    () => {
        "id, account_id, issuer_id, status, identifiers, authorization_ids, expires, \
         certificate_id, certificate_version, error, replaces, created_at, updated_at"
    };
}

macro_rules! authz_columns {
    () => {
        "id, account_id, identifier_type, identifier_value, wildcard, status, expires, created_at"
    };
}

macro_rules! challenge_columns {
    () => {
        "id, authz_id, type, token, status, attempts, next_attempt_at, lease_until, error, \
         validated_at"
    };
}

macro_rules! acme_cert_columns {
    () => {
        "certificate_id, version, serial, order_id, account_id, renew_now_at"
    };
}

fn opt_uuid(row: &impl Columns, col: &str) -> DomainResult<Option<Uuid>> {
    row.opt_text(col)?
        .map(|t| Uuid::parse_str(&t).map_err(|e| corrupt(col, e)))
        .transpose()
}

fn opt_json(row: &impl Columns, col: &str) -> DomainResult<Option<serde_json::Value>> {
    row.opt_text(col)?
        .map(|t| serde_json::from_str(&t).map_err(|e| corrupt(col, e)))
        .transpose()
}

fn json_text(what: &str, value: &impl serde::Serialize) -> DomainResult<String> {
    serde_json::to_string(value).map_err(|e| DomainError::Internal(format!("encoding {what}: {e}")))
}

fn eab_key(row: &impl Columns) -> DomainResult<EabKey> {
    Ok(EabKey {
        key_id: row.text("key_id")?,
        team: row.text("team")?,
        hmac_sealed: row.text("hmac_sealed")?,
        created_by: row.text("created_by")?,
        created_at: get_time(row, "created_at")?,
        expires_at: get_time(row, "expires_at")?,
        revoked_at: get_opt_time(row, "revoked_at")?,
        account_id: opt_uuid(row, "account_id")?,
    })
}

fn account(row: &impl Columns) -> DomainResult<AcmeAccount> {
    Ok(AcmeAccount {
        id: get_uuid(row, "id")?,
        team: row.text("team")?,
        jwk: get_json(row, "jwk")?,
        thumbprint: row.text("thumbprint")?,
        status: get_enum(row, "status", AccountStatus::parse)?,
        contact: get_json(row, "contact")?,
        eab_key_id: row.opt_text("eab_key_id")?,
        created_at: get_time(row, "created_at")?,
        updated_at: get_time(row, "updated_at")?,
    })
}

fn order(row: &impl Columns) -> DomainResult<AcmeOrder> {
    Ok(AcmeOrder {
        id: get_uuid(row, "id")?,
        account_id: get_uuid(row, "account_id")?,
        issuer_id: get_uuid(row, "issuer_id")?,
        status: get_enum(row, "status", OrderStatus::parse)?,
        identifiers: get_json(row, "identifiers")?,
        authorization_ids: get_json(row, "authorization_ids")?,
        expires: get_time(row, "expires")?,
        certificate_id: opt_uuid(row, "certificate_id")?,
        certificate_version: row
            .opt_int("certificate_version")?
            .map(|v| u32::try_from(v).map_err(|e| corrupt("certificate_version", e)))
            .transpose()?,
        error: opt_json(row, "error")?,
        replaces: row.opt_text("replaces")?,
        created_at: get_time(row, "created_at")?,
        updated_at: get_time(row, "updated_at")?,
    })
}

fn authorization(
    row: &impl Columns,
    challenges: Vec<AcmeChallenge>,
) -> DomainResult<AcmeAuthorization> {
    Ok(AcmeAuthorization {
        id: get_uuid(row, "id")?,
        account_id: get_uuid(row, "account_id")?,
        identifier: AcmeIdentifier {
            kind: get_enum(row, "identifier_type", IdentifierType::parse)?,
            value: row.text("identifier_value")?,
        },
        wildcard: row.boolean("wildcard")?,
        status: get_enum(row, "status", AuthzStatus::parse)?,
        expires: get_time(row, "expires")?,
        challenges,
        created_at: get_time(row, "created_at")?,
    })
}

fn challenge(row: &impl Columns) -> DomainResult<AcmeChallenge> {
    Ok(AcmeChallenge {
        id: get_uuid(row, "id")?,
        authz_id: get_uuid(row, "authz_id")?,
        kind: get_enum(row, "type", ChallengeType::parse)?,
        token: row.text("token")?,
        status: get_enum(row, "status", ChallengeStatus::parse)?,
        attempts: get_u32(row, "attempts")?,
        next_attempt_at: get_opt_time(row, "next_attempt_at")?,
        lease_until: get_opt_time(row, "lease_until")?,
        error: opt_json(row, "error")?,
        validated_at: get_opt_time(row, "validated_at")?,
    })
}

fn acme_certificate(row: &impl Columns) -> DomainResult<AcmeCertificate> {
    Ok(AcmeCertificate {
        certificate_id: get_uuid(row, "certificate_id")?,
        version: get_u32(row, "version")?,
        serial: row.text("serial")?,
        order_id: get_uuid(row, "order_id")?,
        account_id: get_uuid(row, "account_id")?,
        renew_now_at: get_opt_time(row, "renew_now_at")?,
    })
}

async fn insert_authorization<B: Backend>(
    conn: &mut B::Connection,
    a: &AcmeAuthorization,
) -> DomainResult<()> {
    let sql = Sql::new(concat!(
        "INSERT INTO acme_authorizations (",
        authz_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    ))
    .bind(id(a.id))
    .bind(id(a.account_id))
    .bind(a.identifier.kind.as_str())
    .bind(a.identifier.value.as_str())
    .bind(a.wildcard)
    .bind(a.status.as_str())
    .bind(secs(a.expires))
    .bind(secs(a.created_at));
    B::execute(conn, sql).await.map_err(|e| {
        conflict(e, |_| {
            Some(format!("authorization {} already exists", a.id))
        })
    })?;
    for (position, c) in a.challenges.iter().enumerate() {
        let sql = Sql::new(concat!(
            "INSERT INTO acme_challenges (position, ",
            challenge_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(i64::try_from(position).unwrap_or(i64::MAX))
        .bind(id(c.id))
        .bind(id(a.id))
        .bind(c.kind.as_str())
        .bind(c.token.as_str())
        .bind(c.status.as_str())
        .bind(i64::from(c.attempts))
        .bind(c.next_attempt_at.map(secs))
        .bind(c.lease_until.map(secs))
        .bind(
            c.error
                .as_ref()
                .map(|e| json_text("error", e))
                .transpose()?
                .as_deref(),
        )
        .bind(c.validated_at.map(secs));
        execute::<B>(conn, sql).await?;
    }
    Ok(())
}

async fn load_challenges<B: Backend>(
    conn: &mut B::Connection,
    authz_id: Uuid,
) -> DomainResult<Vec<AcmeChallenge>> {
    let sql = Sql::new(concat!(
        "SELECT ",
        challenge_columns!(),
        " FROM acme_challenges WHERE authz_id = $1 ORDER BY position"
    ))
    .bind(id(authz_id));
    fetch_all::<B>(conn, sql)
        .await?
        .iter()
        .map(challenge)
        .collect()
}

async fn load_authorization<B: Backend>(
    conn: &mut B::Connection,
    row: Option<B::Record>,
) -> DomainResult<Option<AcmeAuthorization>> {
    let Some(row) = row else {
        return Ok(None);
    };
    let challenges = load_challenges::<B>(conn, get_uuid(&row, "id")?).await?;
    authorization(&row, challenges).map(Some)
}

/// Runs a conditional statement ending in `RETURNING`; `Conflict(message)` if
/// it changed no row.
async fn changed<B: Backend>(
    conn: &mut B::Connection,
    sql: Sql,
    message: impl FnOnce() -> String,
) -> DomainResult<B::Record> {
    fetch_optional::<B>(conn, sql)
        .await?
        .ok_or_else(|| DomainError::Conflict(message()))
}

/// The number of rows a `DELETE ... RETURNING` removed.
async fn deleted<B: Backend>(conn: &mut B::Connection, sql: Sql) -> DomainResult<u64> {
    Ok(u64::try_from(fetch_all::<B>(conn, sql).await?.len()).unwrap_or(u64::MAX))
}

#[async_trait]
impl<B: Backend> AcmeStore for SqlStore<B> {
    async fn insert_eab_key(&self, key: &EabKey, audit: &AuditEvent) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        let sql = Sql::new(concat!(
            "INSERT INTO acme_eab_keys (",
            eab_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(key.key_id.as_str())
        .bind(key.team.as_str())
        .bind(key.hmac_sealed.as_str())
        .bind(key.created_by.as_str())
        .bind(secs(key.created_at))
        .bind(secs(key.expires_at))
        .bind(key.revoked_at.map(secs))
        .bind(key.account_id.map(id).as_deref());
        B::execute(&mut tx, sql).await.map_err(|e| {
            conflict(e, |_| {
                Some(format!("EAB key {} already exists", key.key_id))
            })
        })?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn get_eab_key(&self, key_id: &str) -> DomainResult<Option<EabKey>> {
        self.fetch_optional(
            Sql::new(concat!(
                "SELECT ",
                eab_columns!(),
                " FROM acme_eab_keys WHERE key_id = $1"
            ))
            .bind(key_id),
        )
        .await?
        .as_ref()
        .map(eab_key)
        .transpose()
    }

    async fn list_eab_keys(
        &self,
        teams: Option<&[String]>,
        limit: u32,
    ) -> DomainResult<Vec<EabKey>> {
        let mut sql = Sql::new(concat!("SELECT ", eab_columns!(), " FROM acme_eab_keys"));
        if let Some(teams) = teams {
            if teams.is_empty() {
                return Ok(Vec::new());
            }
            sql.push(" WHERE team IN (");
            for (i, team) in teams.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push_bind(team.as_str());
            }
            sql.push(")");
        }
        sql.push(" ORDER BY created_at DESC, key_id LIMIT ");
        sql.push_bind(i64::from(limit.clamp(1, 1000)));
        self.fetch_all(sql).await?.iter().map(eab_key).collect()
    }

    async fn revoke_eab_key(
        &self,
        key_id: &str,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<EabKey> {
        let mut tx = self.begin_write().await?;
        let sql = Sql::new(concat!(
            "UPDATE acme_eab_keys SET revoked_at = $1 WHERE key_id = $2 AND revoked_at IS NULL \
             RETURNING ",
            eab_columns!()
        ))
        .bind(secs(now))
        .bind(key_id);
        let Some(row) = fetch_optional::<B>(&mut tx, sql).await? else {
            let exists = fetch_optional::<B>(
                &mut tx,
                Sql::new("SELECT key_id FROM acme_eab_keys WHERE key_id = $1").bind(key_id),
            )
            .await?;
            return Err(match exists {
                Some(_) => DomainError::Conflict(format!("EAB key {key_id} is already revoked")),
                None => DomainError::NotFound(format!("EAB key {key_id}")),
            });
        };
        let key = eab_key(&row)?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)?;
        Ok(key)
    }

    async fn create_account(
        &self,
        a: &AcmeAccount,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        if let Some(key_id) = &a.eab_key_id {
            let bound = fetch_optional::<B>(
                &mut tx,
                Sql::new(
                    "UPDATE acme_eab_keys SET account_id = $1 WHERE key_id = $2 AND team = $3 \
                     AND account_id IS NULL AND revoked_at IS NULL AND expires_at > $4 \
                     RETURNING key_id",
                )
                .bind(id(a.id))
                .bind(key_id.as_str())
                .bind(a.team.as_str())
                .bind(secs(now)),
            )
            .await?;
            if bound.is_none() {
                return Err(DomainError::Forbidden(format!(
                    "the EAB key {key_id} is unknown, revoked, expired, already bound to an \
                     account or of another team"
                )));
            }
        }
        let sql = Sql::new(concat!(
            "INSERT INTO acme_accounts (",
            account_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(id(a.id))
        .bind(a.team.as_str())
        .bind(json_text("jwk", &a.jwk)?)
        .bind(a.thumbprint.as_str())
        .bind(a.status.as_str())
        .bind(json_text("contact", &a.contact)?)
        .bind(a.eab_key_id.as_deref())
        .bind(secs(a.created_at))
        .bind(secs(a.updated_at));
        B::execute(&mut tx, sql).await.map_err(|e| {
            conflict(e, |v| {
                Some(match v {
                    Violation::PrimaryKey => format!("account {} already exists", a.id),
                    Violation::Unique => "an account with this key already exists".into(),
                })
            })
        })?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn get_account(&self, account_id: Uuid) -> DomainResult<Option<AcmeAccount>> {
        self.fetch_optional(
            Sql::new(concat!(
                "SELECT ",
                account_columns!(),
                " FROM acme_accounts WHERE id = $1"
            ))
            .bind(id(account_id)),
        )
        .await?
        .as_ref()
        .map(account)
        .transpose()
    }

    async fn get_account_by_thumbprint(
        &self,
        thumbprint: &str,
    ) -> DomainResult<Option<AcmeAccount>> {
        self.fetch_optional(
            Sql::new(concat!(
                "SELECT ",
                account_columns!(),
                " FROM acme_accounts WHERE thumbprint = $1"
            ))
            .bind(thumbprint),
        )
        .await?
        .as_ref()
        .map(account)
        .transpose()
    }

    async fn update_account(
        &self,
        a: &AcmeAccount,
        expected: AccountStatus,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        let sql = Sql::new(
            "UPDATE acme_accounts SET status = $1, contact = $2, updated_at = $3 \
             WHERE id = $4 AND status = $5 RETURNING id",
        )
        .bind(a.status.as_str())
        .bind(json_text("contact", &a.contact)?)
        .bind(secs(a.updated_at))
        .bind(id(a.id))
        .bind(expected.as_str());
        if fetch_optional::<B>(&mut tx, sql).await?.is_none() {
            return Err(self.account_moved(&mut tx, a.id).await);
        }
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn change_account_key(
        &self,
        account_id: Uuid,
        old_thumbprint: &str,
        jwk: &serde_json::Value,
        thumbprint: &str,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        let sql = Sql::new(
            "UPDATE acme_accounts SET jwk = $1, thumbprint = $2, updated_at = $3 \
             WHERE id = $4 AND thumbprint = $5 AND status = 'valid' RETURNING id",
        )
        .bind(json_text("jwk", jwk)?)
        .bind(thumbprint)
        .bind(secs(now))
        .bind(id(account_id))
        .bind(old_thumbprint);
        let row = B::fetch_optional(&mut tx, sql).await.map_err(|e| {
            conflict(e, |_| {
                Some("another account already has the new key".into())
            })
        })?;
        if row.is_none() {
            return Err(self.account_moved(&mut tx, account_id).await);
        }
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn find_reusable_authorization(
        &self,
        account_id: Uuid,
        identifier: &AcmeIdentifier,
        wildcard: bool,
        valid_until: OffsetDateTime,
    ) -> DomainResult<Option<AcmeAuthorization>> {
        let mut conn = self.pool().acquire().await.map_err(map)?;
        let sql = Sql::new(concat!(
            "SELECT ",
            authz_columns!(),
            " FROM acme_authorizations WHERE account_id = $1 AND identifier_type = $2 \
             AND identifier_value = $3 AND wildcard = $4 AND status IN ('pending', 'valid') \
             AND expires > $5 ORDER BY status DESC, expires DESC, id DESC LIMIT 1"
        ))
        .bind(id(account_id))
        .bind(identifier.kind.as_str())
        .bind(identifier.value.as_str())
        .bind(wildcard)
        .bind(secs(valid_until));
        let row = fetch_optional::<B>(&mut conn, sql).await?;
        load_authorization::<B>(&mut conn, row).await
    }

    async fn create_order(
        &self,
        o: &AcmeOrder,
        new_authorizations: &[AcmeAuthorization],
        max_open_orders: u32,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        // Locking the account row serialises one account's new orders, so
        // concurrent requests cannot both pass the bound.
        let mut lock =
            Sql::new("SELECT id FROM acme_accounts WHERE id = $1").bind(id(o.account_id));
        lock.push(B::FOR_UPDATE);
        if fetch_optional::<B>(&mut tx, lock).await?.is_none() {
            return Err(DomainError::NotFound(format!("account {}", o.account_id)));
        }
        let open = total(
            fetch_optional::<B>(
                &mut tx,
                Sql::new(
                    "SELECT COUNT(*) AS n FROM acme_orders WHERE account_id = $1 \
                     AND status IN ('pending', 'ready', 'processing') AND expires > $2",
                )
                .bind(id(o.account_id))
                .bind(secs(o.created_at)),
            )
            .await?,
        )?;
        if open >= u64::from(max_open_orders) {
            return Err(DomainError::Conflict(format!(
                "the account has {open} unfinished orders, the most allowed is {max_open_orders}: \
                 finish or let some expire first"
            )));
        }
        for a in new_authorizations {
            insert_authorization::<B>(&mut tx, a).await?;
        }
        let sql = Sql::new(concat!(
            "INSERT INTO acme_orders (",
            order_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(id(o.id))
        .bind(id(o.account_id))
        .bind(id(o.issuer_id))
        .bind(o.status.as_str())
        .bind(json_text("identifiers", &o.identifiers)?)
        .bind(json_text("authorization_ids", &o.authorization_ids)?)
        .bind(secs(o.expires))
        .bind(o.certificate_id.map(id).as_deref())
        .bind(o.certificate_version.map(i64::from))
        .bind(
            o.error
                .as_ref()
                .map(|e| json_text("error", e))
                .transpose()?
                .as_deref(),
        )
        .bind(o.replaces.as_deref())
        .bind(secs(o.created_at))
        .bind(secs(o.updated_at));
        B::execute(&mut tx, sql)
            .await
            .map_err(|e| conflict(e, |_| Some(format!("order {} already exists", o.id))))?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn get_order(&self, order_id: Uuid) -> DomainResult<Option<AcmeOrder>> {
        self.fetch_optional(
            Sql::new(concat!(
                "SELECT ",
                order_columns!(),
                " FROM acme_orders WHERE id = $1"
            ))
            .bind(id(order_id)),
        )
        .await?
        .as_ref()
        .map(order)
        .transpose()
    }

    async fn update_order(
        &self,
        o: &AcmeOrder,
        expected: OrderStatus,
        audit: Option<&AuditEvent>,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        let sql = Sql::new(
            "UPDATE acme_orders SET status = $1, certificate_id = $2, certificate_version = $3, \
             error = $4, updated_at = $5 WHERE id = $6 AND status = $7 RETURNING id",
        )
        .bind(o.status.as_str())
        .bind(o.certificate_id.map(id).as_deref())
        .bind(o.certificate_version.map(i64::from))
        .bind(
            o.error
                .as_ref()
                .map(|e| json_text("error", e))
                .transpose()?
                .as_deref(),
        )
        .bind(secs(o.updated_at))
        .bind(id(o.id))
        .bind(expected.as_str());
        changed::<B>(&mut tx, sql, || {
            format!("order {} is no longer {expected}", o.id)
        })
        .await?;
        if let Some(audit) = audit {
            insert_audit::<B>(&mut tx, audit).await?;
        }
        tx.commit().await.map_err(map)
    }

    async fn get_authorization(&self, authz_id: Uuid) -> DomainResult<Option<AcmeAuthorization>> {
        let mut conn = self.pool().acquire().await.map_err(map)?;
        let sql = Sql::new(concat!(
            "SELECT ",
            authz_columns!(),
            " FROM acme_authorizations WHERE id = $1"
        ))
        .bind(id(authz_id));
        let row = fetch_optional::<B>(&mut conn, sql).await?;
        load_authorization::<B>(&mut conn, row).await
    }

    async fn set_authorization_status(
        &self,
        authz_id: Uuid,
        expected: AuthzStatus,
        status: AuthzStatus,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        let sql = Sql::new(
            "UPDATE acme_authorizations SET status = $1 WHERE id = $2 AND status = $3 RETURNING id",
        )
        .bind(status.as_str())
        .bind(id(authz_id))
        .bind(expected.as_str());
        changed::<B>(&mut tx, sql, || {
            format!("authorization {authz_id} is no longer {expected}")
        })
        .await?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn get_challenge(&self, challenge_id: Uuid) -> DomainResult<Option<AcmeChallenge>> {
        self.fetch_optional(
            Sql::new(concat!(
                "SELECT ",
                challenge_columns!(),
                " FROM acme_challenges WHERE id = $1"
            ))
            .bind(id(challenge_id)),
        )
        .await?
        .as_ref()
        .map(challenge)
        .transpose()
    }

    async fn start_challenge(
        &self,
        challenge_id: Uuid,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<bool> {
        let mut tx = self.begin_write().await?;
        // Only one challenge of an authorization is ever processed: once one
        // is answered, the others stay pending (RFC 8555 §7.5.1 lets the
        // server pick), and the authorization must still be pending.
        let sql = Sql::new(
            "UPDATE acme_challenges SET status = 'processing', next_attempt_at = $1, error = NULL \
             WHERE id = $2 AND status = 'pending' AND authz_id IN (SELECT a.id FROM \
             acme_authorizations a WHERE a.status = 'pending' AND a.expires > $1 AND NOT EXISTS \
             (SELECT 1 FROM acme_challenges o WHERE o.authz_id = a.id \
             AND o.status <> 'pending')) RETURNING id",
        )
        .bind(secs(now))
        .bind(id(challenge_id));
        if fetch_optional::<B>(&mut tx, sql).await?.is_none() {
            return Ok(false);
        }
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)?;
        Ok(true)
    }

    async fn claim_due_challenges(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> DomainResult<Vec<AcmeChallenge>> {
        let mut tx = self.begin_write().await?;
        let mut due = Sql::new(
            "SELECT id FROM acme_challenges WHERE status = 'processing' AND next_attempt_at <= $1 \
             AND (lease_until IS NULL OR lease_until <= $1) ORDER BY next_attempt_at, id LIMIT $2",
        )
        .bind(secs(now))
        .bind(i64::from(limit.clamp(1, 100)));
        due.push(B::SKIP_LOCKED);
        let ids: Vec<String> = fetch_all::<B>(&mut tx, due)
            .await?
            .iter()
            .map(|r| r.text("id"))
            .collect::<DomainResult<_>>()?;
        let mut claimed = Vec::with_capacity(ids.len());
        for challenge_id in ids {
            let sql = Sql::new(concat!(
                "UPDATE acme_challenges SET lease_until = $1, attempts = attempts + 1 \
                 WHERE id = $2 RETURNING ",
                challenge_columns!()
            ))
            .bind(secs(lease_until))
            .bind(challenge_id);
            if let Some(row) = fetch_optional::<B>(&mut tx, sql).await? {
                claimed.push(challenge(&row)?);
            }
        }
        tx.commit().await.map_err(map)?;
        Ok(claimed)
    }

    async fn finish_challenge(
        &self,
        challenge_id: Uuid,
        attempts: u32,
        outcome: &ValidationOutcome,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        let (status, next, error, validated) = match outcome {
            ValidationOutcome::Valid => (ChallengeStatus::Valid, None, None, Some(secs(now))),
            ValidationOutcome::Retry {
                next_attempt_at,
                error,
            } => (
                ChallengeStatus::Processing,
                Some(secs(*next_attempt_at)),
                Some(json_text("error", error)?),
                None,
            ),
            ValidationOutcome::Invalid { error } => (
                ChallengeStatus::Invalid,
                None,
                Some(json_text("error", error)?),
                None,
            ),
        };
        let sql = Sql::new(
            "UPDATE acme_challenges SET status = $1, next_attempt_at = $2, lease_until = NULL, \
             error = $3, validated_at = $4 WHERE id = $5 AND status = 'processing' \
             AND attempts = $6 AND lease_until IS NOT NULL RETURNING authz_id",
        )
        .bind(status.as_str())
        .bind(next)
        .bind(error.as_deref())
        .bind(validated)
        .bind(id(challenge_id))
        .bind(i64::from(attempts));
        let row = changed::<B>(&mut tx, sql, || {
            format!("challenge {challenge_id} moved on since attempt {attempts}")
        })
        .await?;
        let authz_status = match status {
            ChallengeStatus::Valid => Some(AuthzStatus::Valid),
            ChallengeStatus::Invalid => Some(AuthzStatus::Invalid),
            _ => None,
        };
        if let Some(authz_status) = authz_status {
            execute::<B>(
                &mut tx,
                Sql::new(
                    "UPDATE acme_authorizations SET status = $1 WHERE id = $2 AND status = 'pending'",
                )
                .bind(authz_status.as_str())
                .bind(row.text("authz_id")?),
            )
            .await?;
        }
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn insert_acme_certificate(&self, c: &AcmeCertificate) -> DomainResult<()> {
        let mut conn = self.writer().acquire().await.map_err(map)?;
        let sql = Sql::new(concat!(
            "INSERT INTO acme_certificates (",
            acme_cert_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(id(c.certificate_id))
        .bind(i64::from(c.version))
        .bind(c.serial.as_str())
        .bind(id(c.order_id))
        .bind(id(c.account_id))
        .bind(c.renew_now_at.map(secs));
        B::execute(&mut conn, sql).await.map_err(|e| {
            conflict(e, |_| {
                Some(format!(
                    "version {} of certificate {} is already recorded",
                    c.version, c.certificate_id
                ))
            })
        })
    }

    async fn get_acme_certificate(&self, serial: &str) -> DomainResult<Option<AcmeCertificate>> {
        self.fetch_optional(
            Sql::new(concat!(
                "SELECT ",
                acme_cert_columns!(),
                " FROM acme_certificates WHERE serial = $1 ORDER BY certificate_id LIMIT 1"
            ))
            .bind(serial),
        )
        .await?
        .as_ref()
        .map(acme_certificate)
        .transpose()
    }

    async fn acme_certificates_of(
        &self,
        certificate_id: Uuid,
    ) -> DomainResult<Vec<AcmeCertificate>> {
        self.fetch_all(
            Sql::new(concat!(
                "SELECT ",
                acme_cert_columns!(),
                " FROM acme_certificates WHERE certificate_id = $1 ORDER BY version DESC"
            ))
            .bind(id(certificate_id)),
        )
        .await?
        .iter()
        .map(acme_certificate)
        .collect()
    }

    async fn set_renew_now(
        &self,
        certificate_id: Uuid,
        at: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<u64> {
        let mut tx = self.begin_write().await?;
        let n = deleted::<B>(
            &mut tx,
            Sql::new(
                "UPDATE acme_certificates SET renew_now_at = $1 WHERE certificate_id = $2 \
                 RETURNING version",
            )
            .bind(secs(at))
            .bind(id(certificate_id)),
        )
        .await?;
        if n > 0 {
            insert_audit::<B>(&mut tx, audit).await?;
        }
        tx.commit().await.map_err(map)?;
        Ok(n)
    }

    async fn insert_nonce(&self, nonce: &str, expires_at: OffsetDateTime) -> DomainResult<()> {
        let mut conn = self.writer().acquire().await.map_err(map)?;
        let sql = Sql::new("INSERT INTO acme_nonces (nonce, expires_at) VALUES ($1, $2)")
            .bind(nonce)
            .bind(secs(expires_at));
        B::execute(&mut conn, sql)
            .await
            .map_err(|e| conflict(e, |_| Some("the nonce already exists".into())))
    }

    async fn take_nonce(&self, nonce: &str, now: OffsetDateTime) -> DomainResult<bool> {
        let row = self
            .write_returning(
                Sql::new("DELETE FROM acme_nonces WHERE nonce = $1 RETURNING expires_at")
                    .bind(nonce),
            )
            .await?
            .into_iter()
            .next();
        Ok(match row {
            Some(row) => get_time(&row, "expires_at")? > now,
            None => false,
        })
    }

    async fn purge_expired_acme(
        &self,
        now: OffsetDateTime,
        finished_before: OffsetDateTime,
    ) -> DomainResult<AcmePurge> {
        let mut tx = self.begin_write().await?;
        let nonces = deleted::<B>(
            &mut tx,
            Sql::new("DELETE FROM acme_nonces WHERE expires_at <= $1 RETURNING nonce")
                .bind(secs(now)),
        )
        .await?;
        let orders = deleted::<B>(
            &mut tx,
            Sql::new(
                "DELETE FROM acme_orders WHERE (status IN ('pending', 'ready', 'invalid') \
                 AND expires <= $1) OR created_at < $2 RETURNING id",
            )
            .bind(secs(now))
            .bind(secs(finished_before)),
        )
        .await?;
        // An order names its authorizations in a JSON array of ids: an
        // authorization still named by one stays (the order shows it).
        let unreferenced = "expires <= $1 AND NOT EXISTS (SELECT 1 FROM acme_orders o \
                            WHERE o.authorization_ids LIKE '%' || acme_authorizations.id || '%')";
        let mut challenges = Sql::new(
            "DELETE FROM acme_challenges WHERE authz_id IN (SELECT id FROM acme_authorizations \
             WHERE ",
        );
        challenges.push(unreferenced).push(") RETURNING id");
        deleted::<B>(&mut tx, challenges.bind(secs(now))).await?;
        let mut authz = Sql::new("DELETE FROM acme_authorizations WHERE ");
        authz.push(unreferenced).push(" RETURNING id");
        let authorizations = deleted::<B>(&mut tx, authz.bind(secs(now))).await?;
        tx.commit().await.map_err(map)?;
        Ok(AcmePurge {
            nonces,
            orders,
            authorizations,
        })
    }
}

impl<B: Backend> SqlStore<B> {
    /// Why a conditional account update changed nothing: absent or moved on.
    async fn account_moved(&self, conn: &mut B::Connection, account_id: Uuid) -> DomainError {
        let sql = Sql::new("SELECT status FROM acme_accounts WHERE id = $1").bind(id(account_id));
        match fetch_optional::<B>(conn, sql).await {
            Ok(Some(row)) => DomainError::Conflict(format!(
                "account {account_id} changed meanwhile (now {})",
                row.text("status").unwrap_or_default()
            )),
            Ok(None) => DomainError::NotFound(format!("account {account_id}")),
            Err(e) => e,
        }
    }
}
