//! The backends themselves: each answers (a case on every backend), and what
//! only one of them does: SQLite's files, reopening and refusing what is not
//! a database; PostgreSQL's connecting, migrating once, and timeouts.
//!
//! Add a case by wrapping its `async fn` in `store_case! { ... }` (see `main.rs`).

use certflow_core::ports::MetadataStore;

store_case! {
    async fn ping_answers(store: &dyn MetadataStore) {
        store.ping().await.unwrap();
    }
}

mod sqlite_specific {
    use certflow_core::DomainError;
    use certflow_core::model::{
        Actor, AuditEvent, Certificate, CertificateStatus, CertificateVersion, Issuer, IssuerKind,
        KeySource, KeyType, RenewalPolicy, VersionStatus,
    };
    use certflow_core::ports::MetadataStore;
    use certflow_core::{Profile, SubjectName};
    use certflow_store::SqliteStore;
    use sqlx::Connection;
    use time::OffsetDateTime;
    use uuid::Uuid;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap()
    }

    #[tokio::test]
    async fn file_database_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        // A missing parent directory is created.
        let path = dir.path().join("nested/dir/certflow.db");
        let issuer = Issuer {
            id: Uuid::new_v4(),
            name: "main".into(),
            kind: IssuerKind::Internal,
            is_default: true,
            key_type: KeyType::EcdsaP256,
            issuing_cert_pem: "pem".into(),
            chain_pem: "chain".into(),
            key_blob: "k".into(),
            root_key_blob: None,
            subject: "CN=main".into(),
            not_after: now(),
            created_at: now(),
        };
        let cert = Certificate {
            id: Uuid::new_v4(),
            name: "api.example.com".into(),
            team: "payments".into(),
            labels: [("env".to_owned(), "prod".to_owned())].into(),
            profile: Profile::TlsServer,
            key_type: KeyType::EcdsaP256,
            key_source: KeySource::Server,
            names: vec![SubjectName::Dns("api.example.com".into())],
            validity_days: 90,
            validity_secs: None,
            issuer_id: issuer.id,
            renewal: RenewalPolicy::default(),
            status: CertificateStatus::Active,
            managed: true,
            current_version: 1,
            not_after: now(),
            renew_after: now(),
            created_at: now(),
            updated_at: now(),
        };
        let first = CertificateVersion {
            certificate_id: cert.id,
            version: 1,
            serial: "01".into(),
            fingerprint_sha256: "00".repeat(32),
            not_before: now(),
            not_after: now(),
            key_type: KeyType::EcdsaP256,
            names: cert.names.clone(),
            issuer_id: issuer.id,
            status: VersionStatus::Current,
            revoked_at: None,
            revocation_reason: None,
            cert_blob: "c".into(),
            key_blob: Some("k".into()),
            created_at: now(),
        };
        let audit = |action: &str| {
            AuditEvent::success(now(), &Actor::system(), action, "t", serde_json::json!({}))
        };
        {
            let store = SqliteStore::open(&path).await.unwrap();
            store
                .insert_issuer(&issuer, &audit("issuer.create"))
                .await
                .unwrap();
            store
                .create_certificate(&cert, &first, &audit("certificate.create"), None)
                .await
                .unwrap();
            store
                .put_setting("bootstrap.token_hash", "h")
                .await
                .unwrap();
            store.close().await;
        }
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.list_issuers().await.unwrap(), vec![issuer]);
        assert_eq!(
            store.get_certificate(cert.id).await.unwrap(),
            Some(cert.clone())
        );
        assert_eq!(store.list_versions(cert.id).await.unwrap(), vec![first]);
        assert_eq!(
            store
                .get_setting("bootstrap.token_hash")
                .await
                .unwrap()
                .as_deref(),
            Some("h")
        );
        let audit_page = store
            .list_audit(&certflow_core::model::AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(audit_page.total, 2);
        store.close().await;

        // WAL is a property of the file, visible to any later connection.
        let url = format!("sqlite://{}", path.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            applied,
            crate::support::migration_files("sqlite").len() as i64
        );
    }

    #[tokio::test]
    async fn unusable_path_is_reported_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        for path in [file.join("certflow.db"), dir.path().to_path_buf()] {
            match SqliteStore::open(&path).await {
                Err(DomainError::Unavailable { backend, reason }) => {
                    assert_eq!(backend, "database");
                    assert!(reason.contains(&path.display().to_string()), "{reason}");
                }
                other => panic!("expected Unavailable for {}, got {other:?}", path.display()),
            }
        }
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.db");
        std::fs::write(&path, vec![0x42_u8; 8192]).unwrap();
        let result = SqliteStore::open(&path).await;
        assert!(matches!(
            result,
            Err(DomainError::Unavailable {
                backend: "database",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn memory_stores_are_independent() {
        let a = SqliteStore::open_memory().await.unwrap();
        let b = SqliteStore::open_memory().await.unwrap();
        a.put_setting("k", "v").await.unwrap();
        assert_eq!(b.get_setting("k").await.unwrap(), None);
        assert_eq!(a.get_setting("k").await.unwrap().as_deref(), Some("v"));
    }
}

mod postgres_specific {
    use std::time::{Duration, Instant};

    use certflow_core::DomainError;
    use certflow_core::ports::MetadataStore;
    use certflow_store::{PgOptions, PgStore};
    use sqlx::{Connection, Executor};

    use crate::support::pg::TestDb;

    /// Replicas starting together: each migrates under the advisory lock, so
    /// all succeed and the schema is applied once.
    #[tokio::test]
    async fn concurrent_connects_migrate_once() {
        let db = TestDb::create().await;
        let url = db.url();
        let connect = || PgStore::connect(&url, PgOptions::default());
        let (a, b, c, d) = tokio::join!(connect(), connect(), connect(), connect());
        let stores = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()];
        stores[0].put_setting("k", "v").await.unwrap();
        for store in &stores {
            assert_eq!(store.get_setting("k").await.unwrap().as_deref(), Some("v"));
        }
        let mut conn = db.connect().await;
        let applied: Vec<(i64, bool)> =
            sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let expected: Vec<(i64, bool)> = (1..)
            .zip(crate::support::migration_files("postgres"))
            .map(|(version, _)| (version, true))
            .collect();
        assert_eq!(applied, expected);
        let tables: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let created = crate::support::migration_files("postgres")
            .iter()
            .map(|sql| sql.matches("CREATE TABLE ").count() as i64)
            .sum::<i64>();
        assert_eq!(tables, created);
        for store in &stores {
            store.close().await;
        }
    }

    #[tokio::test]
    async fn data_survives_reconnecting() {
        let db = TestDb::create().await;
        let store = PgStore::connect(&db.url(), PgOptions::default())
            .await
            .unwrap();
        store
            .put_setting("bootstrap.token_hash", "h")
            .await
            .unwrap();
        store.close().await;
        assert!(matches!(
            store.ping().await,
            Err(DomainError::Unavailable {
                backend: "database",
                ..
            })
        ));
        let store = PgStore::connect(&db.url(), PgOptions::default())
            .await
            .unwrap();
        assert_eq!(
            store
                .get_setting("bootstrap.token_hash")
                .await
                .unwrap()
                .as_deref(),
            Some("h")
        );
        store.close().await;
    }

    #[tokio::test]
    async fn unreachable_server_is_unavailable_naming_it_but_not_the_password() {
        // Nothing listens on port 1; the store retries until the timeout.
        let options = PgOptions {
            connect_timeout: Duration::from_millis(300),
            ..PgOptions::default()
        };
        let started = Instant::now();
        let result = PgStore::connect(
            "postgres://certflow:s3cret-pw@127.0.0.1:1/certflow",
            options,
        )
        .await;
        match result {
            Err(DomainError::Unavailable { backend, reason }) => {
                assert_eq!(backend, "database");
                assert!(reason.contains("127.0.0.1:1/certflow"), "{reason}");
                assert!(reason.to_lowercase().contains("refused"), "{reason}");
                assert!(!reason.contains("s3cret-pw"), "{reason}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn missing_database_is_unavailable() {
        let db = TestDb::create().await;
        let url = db.url().replace("certflow_test_", "certflow_missing_");
        match PgStore::connect(&url, PgOptions::default()).await {
            Err(DomainError::Unavailable { reason, .. }) => {
                assert!(reason.contains("certflow_missing_"), "{reason}");
                assert!(reason.contains("does not exist"), "{reason}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_options_are_refused_before_connecting() {
        let zero = PgOptions {
            max_connections: 0,
            ..PgOptions::default()
        };
        assert!(matches!(
            PgStore::connect("postgres://nowhere.invalid/x", zero).await,
            Err(DomainError::Invalid(_))
        ));
        match PgStore::connect("postgres://u:pw@host:notaport/x", PgOptions::default()).await {
            Err(DomainError::Unavailable { reason, .. }) => {
                assert!(reason.contains("invalid PostgreSQL URL"), "{reason}");
                assert!(!reason.contains("pw@"), "{reason}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    /// `statement_timeout` applies to every pooled connection: a statement
    /// stuck behind a lock fails as unavailable instead of hanging.
    #[tokio::test]
    async fn statement_timeout_bounds_each_statement() {
        let db = TestDb::create().await;
        let options = PgOptions {
            statement_timeout: Some(Duration::from_millis(200)),
            ..PgOptions::default()
        };
        let store = PgStore::connect(&db.url(), options).await.unwrap();
        store.put_setting("k", "v").await.unwrap();

        let mut blocker = db.connect().await;
        blocker.execute("BEGIN").await.unwrap();
        blocker
            .execute("LOCK TABLE settings IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let started = Instant::now();
        match store.get_setting("k").await {
            Err(DomainError::Unavailable { backend, reason }) => {
                assert_eq!(backend, "database");
                assert!(reason.contains("statement timeout"), "{reason}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        blocker.execute("ROLLBACK").await.unwrap();
        blocker.close().await.unwrap();
        assert_eq!(store.get_setting("k").await.unwrap().as_deref(), Some("v"));
        store.close().await;
    }
}
