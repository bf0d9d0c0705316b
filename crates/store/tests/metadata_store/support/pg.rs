//! A fresh PostgreSQL database per test.

use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use uuid::Uuid;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database that exists until this is dropped (best effort: a test
/// process that is killed leaves it behind, named `certflow_test_*`).
pub struct TestDb {
    admin_url: String,
    name: String,
}

impl TestDb {
    /// Creates an empty database. Its default collation is ICU English
    /// where the server has ICU, so that byte-order sorting must come
    /// from the schema, as on most production servers.
    pub async fn create() -> Self {
        let admin_url =
            std::env::var("CERTFLOW_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let mut admin = admin_connection(&admin_url).await;
        let name = format!("certflow_test_{}", Uuid::new_v4().simple());
        let icu = format!(
            "CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu \
             ICU_LOCALE 'en' LOCALE 'C.UTF-8'"
        );
        if admin.execute(AssertSqlSafe(icu)).await.is_err() {
            admin
                .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await
                .unwrap();
        }
        admin.close().await.unwrap();
        Self { admin_url, name }
    }

    /// URL of the database, with the administrator's credentials.
    pub fn url(&self) -> String {
        with_database(&self.admin_url, &self.name)
    }

    /// A direct connection to the database, to look behind the store.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url()).await.unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop runs inside the test's runtime, which cannot be blocked
        // on; a thread with its own runtime can.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&admin_url)
                    .await
                    .map_err(|e| e.to_string())?;
                admin
                    .execute(AssertSqlSafe(drop))
                    .await
                    .map_err(|e| e.to_string())?;
                admin.close().await.map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

async fn admin_connection(url: &str) -> PgConnection {
    match PgConnection::connect(url).await {
        Ok(conn) => conn,
        Err(e) => panic!(
            "PostgreSQL is not reachable at {url}: {e}\n\
             The PostgreSQL tests need a running server. Start the local one with\n    \
             pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n\
             or point CERTFLOW_TEST_PG_URL at another (trust authentication, may CREATE DATABASE)."
        ),
    }
}

/// `url` with its database (path) replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{database}{query}", &base[..authority_end])
}

#[test]
fn database_replaced_in_url() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/db?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
}
