//! [`SessionStore`] written once for every [`Backend`]: pending console logins
//! and browser sessions (tables of `migrations/*/0006_sessions.sql`; since
//! `0013_session_secrets.sql` a session row holds no CSRF token and only a
//! sealed ID token).

use async_trait::async_trait;
use certflow_core::DomainError;
use certflow_core::access::Principal;
use certflow_core::error::DomainResult;
use certflow_core::ports::SessionStore;
use certflow_core::session::{PendingLogin, Session};
use time::OffsetDateTime;

use crate::codec::to_json;
use crate::error::{Violation, conflict, corrupt, map};
use crate::query::{Backend, Columns, Sql};
use crate::store::{SqlStore, execute, fetch_optional};

const SESSION_COLUMNS: &str = "id_hash, subject, principal, sealed_id_token, created_ms, \
     last_seen_ms, idle_expires_ms, absolute_expires_ms";

/// Column value of an instant in these tables: unix milliseconds.
fn millis(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn get_millis(row: &impl Columns, col: &str) -> DomainResult<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(row.int(col)?) * 1_000_000)
        .map_err(|e| corrupt(col, e))
}

fn session(row: &impl Columns) -> DomainResult<Session> {
    let principal: Principal =
        serde_json::from_str(&row.text("principal")?).map_err(|e| corrupt("principal", e))?;
    Ok(Session {
        id_hash: row.text("id_hash")?,
        principal,
        sealed_id_token: row.opt_text("sealed_id_token")?,
        created_at: get_millis(row, "created_ms")?,
        last_seen: get_millis(row, "last_seen_ms")?,
        idle_expires_at: get_millis(row, "idle_expires_ms")?,
        absolute_expires_at: get_millis(row, "absolute_expires_ms")?,
    })
}

#[async_trait]
impl<B: Backend> SessionStore for SqlStore<B> {
    async fn insert_pending_login(&self, login: &PendingLogin) -> DomainResult<()> {
        let mut conn = self.writer().acquire().await.map_err(map)?;
        let sql = Sql::new(
            "INSERT INTO login_states (state_hash, nonce, pkce_verifier, created_ms, expires_ms, \
             return_to) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(login.state_hash.as_str())
        .bind(login.nonce.as_str())
        .bind(login.pkce_verifier.as_str())
        .bind(millis(login.created_at))
        .bind(millis(login.expires_at))
        .bind(login.return_to.as_deref());
        B::execute(&mut conn, sql).await.map_err(|e| {
            conflict(e, |v| {
                (v == Violation::PrimaryKey).then(|| "login state already exists".to_owned())
            })
        })
    }

    async fn take_pending_login(&self, state_hash: &str) -> DomainResult<Option<PendingLogin>> {
        // One statement: of two concurrent callbacks with one state, one gets the row.
        let row = self
            .write_returning(
                Sql::new(
                    "DELETE FROM login_states WHERE state_hash = $1 \
                     RETURNING state_hash, nonce, pkce_verifier, created_ms, expires_ms, return_to",
                )
                .bind(state_hash),
            )
            .await?
            .into_iter()
            .next();
        row.map(|row| {
            Ok(PendingLogin {
                state_hash: row.text("state_hash")?,
                nonce: row.text("nonce")?,
                pkce_verifier: row.text("pkce_verifier")?,
                created_at: get_millis(&row, "created_ms")?,
                expires_at: get_millis(&row, "expires_ms")?,
                return_to: row.opt_text("return_to")?,
            })
        })
        .transpose()
    }

    async fn insert_session(&self, s: &Session) -> DomainResult<()> {
        let mut conn = self.writer().acquire().await.map_err(map)?;
        let mut sql = Sql::new("INSERT INTO sessions (");
        sql.push(SESSION_COLUMNS)
            .push(") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)");
        let sql = sql
            .bind(s.id_hash.as_str())
            .bind(s.principal.subject.as_str())
            .bind(to_json("session principal", &s.principal)?)
            .bind(s.sealed_id_token.as_deref())
            .bind(millis(s.created_at))
            .bind(millis(s.last_seen))
            .bind(millis(s.idle_expires_at))
            .bind(millis(s.absolute_expires_at));
        B::execute(&mut conn, sql).await.map_err(|e| {
            conflict(e, |v| {
                (v == Violation::PrimaryKey).then(|| "session id already exists".to_owned())
            })
        })
    }

    async fn get_session(&self, id_hash: &str) -> DomainResult<Option<Session>> {
        let mut sql = Sql::new("SELECT ");
        sql.push(SESSION_COLUMNS)
            .push(" FROM sessions WHERE id_hash = ")
            .push_bind(id_hash);
        self.fetch_optional(sql)
            .await?
            .as_ref()
            .map(session)
            .transpose()
    }

    async fn touch_session(
        &self,
        id_hash: &str,
        last_seen: OffsetDateTime,
        idle_expires_at: OffsetDateTime,
    ) -> DomainResult<()> {
        let mut conn = self.writer().acquire().await.map_err(map)?;
        // Never moves last_seen backwards when two requests race.
        let sql = Sql::new(
            "UPDATE sessions SET last_seen_ms = $2, idle_expires_ms = $3 \
             WHERE id_hash = $1 AND last_seen_ms < $2",
        )
        .bind(id_hash)
        .bind(millis(last_seen))
        .bind(millis(idle_expires_at));
        execute::<B>(&mut conn, sql).await
    }

    async fn delete_session(&self, id_hash: &str) -> DomainResult<bool> {
        let mut conn = self.writer().acquire().await.map_err(map)?;
        let gone = fetch_optional::<B>(
            &mut conn,
            Sql::new("DELETE FROM sessions WHERE id_hash = $1 RETURNING id_hash").bind(id_hash),
        )
        .await?;
        Ok(gone.is_some())
    }

    async fn purge_expired_sessions(&self, now: OffsetDateTime) -> DomainResult<u64> {
        let mut tx = self.begin_write().await?;
        let now = millis(now);
        let mut n = 0_u64;
        for sql in [
            "DELETE FROM login_states WHERE expires_ms <= $1 RETURNING state_hash",
            "DELETE FROM sessions WHERE idle_expires_ms <= $1 RETURNING id_hash",
            "DELETE FROM sessions WHERE absolute_expires_ms <= $1 RETURNING id_hash",
        ] {
            let rows = B::fetch_all(&mut tx, Sql::new(sql).bind(now))
                .await
                .map_err(map)?;
            n += u64::try_from(rows.len())
                .map_err(|e| DomainError::Internal(format!("row count: {e}")))?;
        }
        tx.commit().await.map_err(map)?;
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use certflow_core::access::{PrincipalKind, Role};
    use certflow_core::ports::SessionStore;
    use time::Duration;

    use super::*;

    fn t0() -> OffsetDateTime {
        // Milliseconds survive the round trip.
        OffsetDateTime::from_unix_timestamp_nanos(1_767_225_600_123_000_000).unwrap()
    }

    fn session(id_hash: &str, now: OffsetDateTime) -> Session {
        Session {
            id_hash: id_hash.into(),
            principal: Principal {
                subject: "alice".into(),
                kind: PrincipalKind::Person,
                roles: vec![Role::Operator],
                teams: vec!["payments".into()],
            },
            sealed_id_token: Some("sealed".into()),
            created_at: now,
            last_seen: now,
            idle_expires_at: now + Duration::minutes(30),
            absolute_expires_at: now + Duration::hours(12),
        }
    }

    async fn suite(store: &dyn SessionStore) {
        let now = t0();
        let login = PendingLogin {
            state_hash: "s1".into(),
            nonce: "n1".into(),
            pkce_verifier: "v1".into(),
            created_at: now,
            expires_at: now + Duration::minutes(10),
            return_to: Some("/console/certificates?team=a&label=env%3Dprod".into()),
        };
        store.insert_pending_login(&login).await.unwrap();
        assert!(matches!(
            store.insert_pending_login(&login).await,
            Err(DomainError::Conflict(_))
        ));
        // Two concurrent callbacks with one state: exactly one gets the login.
        let (a, b) = tokio::join!(
            store.take_pending_login("s1"),
            store.take_pending_login("s1")
        );
        let got: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
        assert_eq!(got, vec![login]);
        assert_eq!(store.take_pending_login("s1").await.unwrap(), None);

        let s = session("h1", now);
        store.insert_session(&s).await.unwrap();
        assert!(matches!(
            store.insert_session(&s).await,
            Err(DomainError::Conflict(_))
        ));
        assert_eq!(store.get_session("h1").await.unwrap(), Some(s.clone()));
        assert_eq!(store.get_session("h2").await.unwrap(), None);

        let later = now + Duration::milliseconds(1500);
        store
            .touch_session("h1", later, later + Duration::minutes(30))
            .await
            .unwrap();
        // An older touch (a slower concurrent request) does not move it back.
        store
            .touch_session("h1", now, now + Duration::minutes(30))
            .await
            .unwrap();
        let got = store.get_session("h1").await.unwrap().unwrap();
        assert_eq!(
            (got.last_seen, got.idle_expires_at),
            (later, later + Duration::minutes(30))
        );

        // Purge: an idle-expired and an absolutely expired session, an expired login.
        let mut idle = session("idle", now);
        idle.idle_expires_at = now + Duration::seconds(1);
        let mut absolute = session("abs", now);
        absolute.absolute_expires_at = now + Duration::seconds(2);
        store.insert_session(&idle).await.unwrap();
        store.insert_session(&absolute).await.unwrap();
        let old = PendingLogin {
            state_hash: "s2".into(),
            nonce: "n".into(),
            pkce_verifier: "v".into(),
            created_at: now,
            expires_at: now + Duration::seconds(1),
            return_to: None,
        };
        store.insert_pending_login(&old).await.unwrap();
        assert_eq!(
            store
                .purge_expired_sessions(now + Duration::seconds(3))
                .await
                .unwrap(),
            3
        );
        assert!(store.get_session("idle").await.unwrap().is_none());
        assert!(store.get_session("abs").await.unwrap().is_none());
        assert!(store.get_session("h1").await.unwrap().is_some());

        assert!(store.delete_session("h1").await.unwrap());
        assert!(!store.delete_session("h1").await.unwrap());
        assert_eq!(store.get_session("h1").await.unwrap(), None);
    }

    #[tokio::test]
    async fn sessions_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::SqliteStore::open(&dir.path().join("s.db"))
            .await
            .unwrap();
        suite(&store).await;
    }

    #[tokio::test]
    async fn sessions_on_postgres() {
        use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
        let admin = "postgres://postgres@127.0.0.1:5432/postgres";
        let mut conn = PgConnection::connect(admin).await.expect(
            "PostgreSQL on 127.0.0.1:5432 is required (start it: pg_ctlcluster \
             --skip-systemctl-redirect $(ls /etc/postgresql) main start)",
        );
        let name = format!("certflow_test_{}", uuid::Uuid::new_v4().simple());
        conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let store = crate::PgStore::connect(
            &format!("postgres://postgres@127.0.0.1:5432/{name}"),
            crate::PgOptions::default(),
        )
        .await
        .unwrap();
        suite(&store).await;
        store.close().await;
        conn.execute(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .await
        .unwrap();
    }
}
