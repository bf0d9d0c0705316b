//! [`AgentStore`] written once for every [`Backend`]: the agent-identity CA,
//! join tokens (stored as SHA-256 only) and agents.
//!
//! A join token is consumed by a conditional `UPDATE ... WHERE used_at IS NULL
//! AND expires_at > now` inside the enrolment transaction: on PostgreSQL the
//! second of two concurrent updates waits for the first's row lock, re-reads
//! the row and finds it used; on SQLite the transaction holds the write lock.
//! Either way exactly one enrolment per token commits.

use async_trait::async_trait;
use certflow_core::DomainError;
use certflow_core::agents::{Agent, AgentCaRecord, AgentStatus, JoinToken};
use certflow_core::error::DomainResult;
use certflow_core::model::AuditEvent;
use certflow_core::ports::AgentStore;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::audit::insert_audit;
use crate::codec::{get_enum, get_json, get_opt_time, get_time, get_uuid, id, secs, to_json};
use crate::error::{Violation, conflict, corrupt, map};
use crate::query::{Backend, Columns, Sql};
use crate::store::{SqlStore, execute, fetch_optional};

macro_rules! agent_columns {
    () => {
        "id, name, teams, status, cert_serial, cert_fingerprint_sha256, cert_not_after, \
         created_at, last_seen, subject"
    };
}

macro_rules! token_columns {
    () => {
        "id, token_sha256, name, teams, expires_at, created_by, created_at, used_at, agent_id"
    };
}

macro_rules! agent_ca_columns {
    () => {
        "id, issuing_cert_pem, chain_pem, key_blob, root_key_blob, not_after, created_at"
    };
}

fn agent(row: &impl Columns) -> DomainResult<Agent> {
    Ok(Agent {
        id: get_uuid(row, "id")?,
        name: row.text("name")?,
        teams: get_json(row, "teams")?,
        status: get_enum(row, "status", AgentStatus::parse)?,
        cert_serial: row.text("cert_serial")?,
        cert_fingerprint_sha256: row.text("cert_fingerprint_sha256")?,
        cert_not_after: get_time(row, "cert_not_after")?,
        created_at: get_time(row, "created_at")?,
        last_seen: get_opt_time(row, "last_seen")?,
        subject: row.opt_text("subject")?,
    })
}

fn join_token(row: &impl Columns) -> DomainResult<JoinToken> {
    Ok(JoinToken {
        id: get_uuid(row, "id")?,
        token_sha256: row.text("token_sha256")?,
        name: row.text("name")?,
        teams: get_json(row, "teams")?,
        expires_at: get_time(row, "expires_at")?,
        created_by: row.text("created_by")?,
        created_at: get_time(row, "created_at")?,
        used_at: get_opt_time(row, "used_at")?,
        agent_id: row
            .opt_text("agent_id")?
            .map(|t| Uuid::parse_str(&t).map_err(|e| corrupt("agent_id", e)))
            .transpose()?,
    })
}

fn agent_ca(row: &impl Columns) -> DomainResult<AgentCaRecord> {
    Ok(AgentCaRecord {
        id: get_uuid(row, "id")?,
        issuing_cert_pem: row.text("issuing_cert_pem")?,
        chain_pem: row.text("chain_pem")?,
        key_blob: row.text("key_blob")?,
        root_key_blob: row.opt_text("root_key_blob")?,
        not_after: get_time(row, "not_after")?,
        created_at: get_time(row, "created_at")?,
    })
}

async fn load_agent<B: Backend>(
    conn: &mut B::Connection,
    agent_id: Uuid,
    lock: bool,
) -> DomainResult<Option<Agent>> {
    let mut sql = Sql::new(concat!(
        "SELECT ",
        agent_columns!(),
        " FROM agents WHERE id = "
    ));
    sql.push_bind(id(agent_id));
    if lock {
        sql.push(B::FOR_UPDATE);
    }
    fetch_optional::<B>(conn, sql)
        .await?
        .as_ref()
        .map(agent)
        .transpose()
}

async fn insert_agent<B: Backend>(conn: &mut B::Connection, a: &Agent) -> DomainResult<()> {
    let sql = Sql::new(concat!(
        "INSERT INTO agents (",
        agent_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(id(a.id))
    .bind(a.name.as_str())
    .bind(to_json("teams", &a.teams)?)
    .bind(a.status.as_str())
    .bind(a.cert_serial.as_str())
    .bind(a.cert_fingerprint_sha256.as_str())
    .bind(secs(a.cert_not_after))
    .bind(secs(a.created_at))
    .bind(a.last_seen.map(secs))
    .bind(a.subject.as_deref());
    B::execute(conn, sql).await.map_err(|e| {
        conflict(e, |v| {
            Some(match v {
                Violation::PrimaryKey => format!("agent {} already exists", a.id),
                Violation::Unique => "an agent with this token subject already exists".into(),
            })
        })
    })?;
    Ok(())
}

#[async_trait]
impl<B: Backend> AgentStore for SqlStore<B> {
    async fn get_agent_ca(&self) -> DomainResult<Option<AgentCaRecord>> {
        self.fetch_optional(Sql::new(concat!(
            "SELECT ",
            agent_ca_columns!(),
            " FROM agent_ca WHERE slot = 'current'"
        )))
        .await?
        .as_ref()
        .map(agent_ca)
        .transpose()
    }

    async fn insert_agent_ca(&self, ca: &AgentCaRecord, audit: &AuditEvent) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        let sql = Sql::new(concat!(
            "INSERT INTO agent_ca (slot, ",
            agent_ca_columns!(),
            ") VALUES ('current', $1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(id(ca.id))
        .bind(ca.issuing_cert_pem.as_str())
        .bind(ca.chain_pem.as_str())
        .bind(ca.key_blob.as_str())
        .bind(ca.root_key_blob.as_deref())
        .bind(secs(ca.not_after))
        .bind(secs(ca.created_at));
        B::execute(&mut tx, sql)
            .await
            .map_err(|e| conflict(e, |_| Some("the agent-identity CA already exists".into())))?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn insert_join_token(&self, token: &JoinToken, audit: &AuditEvent) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        let sql = Sql::new(concat!(
            "INSERT INTO agent_join_tokens (",
            token_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(id(token.id))
        .bind(token.token_sha256.as_str())
        .bind(token.name.as_str())
        .bind(to_json("teams", &token.teams)?)
        .bind(secs(token.expires_at))
        .bind(token.created_by.as_str())
        .bind(secs(token.created_at))
        .bind(token.used_at.map(secs))
        .bind(token.agent_id.map(id).as_deref());
        B::execute(&mut tx, sql).await.map_err(|e| {
            conflict(e, |v| {
                Some(match v {
                    Violation::PrimaryKey => format!("join token {} already exists", token.id),
                    Violation::Unique => "a join token with this hash already exists".into(),
                })
            })
        })?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn get_join_token(&self, token_sha256: &str) -> DomainResult<Option<JoinToken>> {
        self.fetch_optional(
            Sql::new(concat!(
                "SELECT ",
                token_columns!(),
                " FROM agent_join_tokens WHERE token_sha256 = $1"
            ))
            .bind(token_sha256),
        )
        .await?
        .as_ref()
        .map(join_token)
        .transpose()
    }

    async fn enroll_agent(
        &self,
        token_sha256: &str,
        now: OffsetDateTime,
        a: &Agent,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        let consumed = fetch_optional::<B>(
            &mut tx,
            Sql::new(
                "UPDATE agent_join_tokens SET used_at = $1, agent_id = $2 \
                 WHERE token_sha256 = $3 AND used_at IS NULL AND expires_at > $1 RETURNING id",
            )
            .bind(secs(now))
            .bind(id(a.id))
            .bind(token_sha256),
        )
        .await?;
        if consumed.is_none() {
            // Dropping the transaction rolls it back.
            return Err(DomainError::Forbidden(
                "the join token is unknown, used or expired".into(),
            ));
        }
        insert_agent::<B>(&mut tx, a).await?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn get_agent(&self, agent_id: Uuid) -> DomainResult<Option<Agent>> {
        let mut conn = self.pool().acquire().await.map_err(map)?;
        load_agent::<B>(&mut conn, agent_id, false).await
    }

    async fn list_agents(&self) -> DomainResult<Vec<Agent>> {
        self.fetch_all(Sql::new(concat!(
            "SELECT ",
            agent_columns!(),
            " FROM agents ORDER BY id"
        )))
        .await?
        .iter()
        .map(agent)
        .collect()
    }

    async fn set_agent_status(
        &self,
        agent_id: Uuid,
        status: AgentStatus,
        audit: &AuditEvent,
    ) -> DomainResult<Agent> {
        let mut tx = self.begin_write().await?;
        let mut current = load_agent::<B>(&mut tx, agent_id, true)
            .await?
            .ok_or_else(|| DomainError::NotFound(format!("agent {agent_id}")))?;
        if current.status == AgentStatus::Revoked && status != AgentStatus::Revoked {
            return Err(DomainError::Conflict(format!(
                "agent {agent_id} is revoked; enrol it again with a new join token"
            )));
        }
        execute::<B>(
            &mut tx,
            Sql::new("UPDATE agents SET status = $1 WHERE id = $2")
                .bind(status.as_str())
                .bind(id(agent_id)),
        )
        .await?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)?;
        current.status = status;
        Ok(current)
    }

    async fn replace_agent_identity(
        &self,
        agent_id: Uuid,
        previous_serial: &str,
        serial: &str,
        fingerprint_sha256: &str,
        not_after: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<()> {
        let mut tx = self.begin_write().await?;
        let changed = fetch_optional::<B>(
            &mut tx,
            Sql::new(
                "UPDATE agents SET cert_serial = $1, cert_fingerprint_sha256 = $2, \
                 cert_not_after = $3 WHERE id = $4 AND cert_serial = $5 AND status = 'active' \
                 RETURNING id",
            )
            .bind(serial)
            .bind(fingerprint_sha256)
            .bind(secs(not_after))
            .bind(id(agent_id))
            .bind(previous_serial),
        )
        .await?;
        if changed.is_none() {
            return Err(DomainError::Conflict(format!(
                "agent {agent_id} is not active or its identity changed meanwhile"
            )));
        }
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn touch_agent(&self, agent_id: Uuid, now: OffsetDateTime) -> DomainResult<()> {
        let mut conn = self.writer().acquire().await.map_err(map)?;
        execute::<B>(
            &mut conn,
            Sql::new("UPDATE agents SET last_seen = $1 WHERE id = $2")
                .bind(secs(now))
                .bind(id(agent_id)),
        )
        .await
    }

    async fn get_agent_by_subject(&self, subject: &str) -> DomainResult<Option<Agent>> {
        self.fetch_optional(
            Sql::new(concat!(
                "SELECT ",
                agent_columns!(),
                " FROM agents WHERE subject = $1"
            ))
            .bind(subject),
        )
        .await?
        .as_ref()
        .map(agent)
        .transpose()
    }

    async fn insert_token_agent(&self, a: &Agent, audit: &AuditEvent) -> DomainResult<()> {
        if a.subject.is_none() {
            return Err(DomainError::Internal(
                "an agent enrolled by token needs its subject".into(),
            ));
        }
        let mut tx = self.begin_write().await?;
        insert_agent::<B>(&mut tx, a).await?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)
    }

    async fn reenroll_agent(
        &self,
        agent_id: Uuid,
        subject: &str,
        serial: &str,
        fingerprint_sha256: &str,
        not_after: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<Agent> {
        let mut tx = self.begin_write().await?;
        // The status check is in the UPDATE itself: an agent disabled between
        // the caller's read and this write is not given a new identity.
        let changed = fetch_optional::<B>(
            &mut tx,
            Sql::new(
                "UPDATE agents SET cert_serial = $1, cert_fingerprint_sha256 = $2, \
                 cert_not_after = $3 WHERE id = $4 AND subject = $5 AND status = 'active' \
                 RETURNING id",
            )
            .bind(serial)
            .bind(fingerprint_sha256)
            .bind(secs(not_after))
            .bind(id(agent_id))
            .bind(subject),
        )
        .await?;
        if changed.is_none() {
            return Err(DomainError::Forbidden(format!(
                "agent {agent_id} is not active or not bound to this subject"
            )));
        }
        insert_audit::<B>(&mut tx, audit).await?;
        let agent = load_agent::<B>(&mut tx, agent_id, false)
            .await?
            .ok_or_else(|| DomainError::Internal(format!("agent {agent_id} vanished")))?;
        tx.commit().await.map_err(map)?;
        Ok(agent)
    }

    async fn list_join_tokens(&self, limit: u32) -> DomainResult<Vec<JoinToken>> {
        self.fetch_all(
            Sql::new(concat!(
                "SELECT ",
                token_columns!(),
                " FROM agent_join_tokens ORDER BY id DESC LIMIT $1"
            ))
            .bind(i64::from(limit)),
        )
        .await?
        .iter()
        .map(join_token)
        .collect()
    }

    async fn revoke_join_token(
        &self,
        token_id: Uuid,
        now: OffsetDateTime,
        audit: &AuditEvent,
    ) -> DomainResult<JoinToken> {
        let mut tx = self.begin_write().await?;
        // The same condition enrolment consumes under: of a revocation and an
        // enrolment racing, exactly one finds the token usable.
        let revoked = fetch_optional::<B>(
            &mut tx,
            Sql::new(concat!(
                "UPDATE agent_join_tokens SET expires_at = $1 \
                 WHERE id = $2 AND used_at IS NULL AND expires_at > $1 RETURNING ",
                token_columns!()
            ))
            .bind(secs(now))
            .bind(id(token_id)),
        )
        .await?;
        let Some(row) = revoked else {
            let current = fetch_optional::<B>(
                &mut tx,
                Sql::new(concat!(
                    "SELECT ",
                    token_columns!(),
                    " FROM agent_join_tokens WHERE id = $1"
                ))
                .bind(id(token_id)),
            )
            .await?;
            return Err(match current.as_ref().map(join_token).transpose()? {
                None => DomainError::NotFound(format!("join token {token_id}")),
                Some(t) if t.used_at.is_some() => DomainError::Conflict(format!(
                    "join token {token_id} was already used; disable or revoke its agent instead"
                )),
                Some(_) => DomainError::Conflict(format!("join token {token_id} has expired")),
            });
        };
        let token = join_token(&row)?;
        insert_audit::<B>(&mut tx, audit).await?;
        tx.commit().await.map_err(map)?;
        Ok(token)
    }
}
