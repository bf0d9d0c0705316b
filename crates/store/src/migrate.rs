//! Embedded migrations, run by sqlx's migrator without its proc macros.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// One embedded migration: `(version, description, sql)`.
pub(crate) type Embedded = (i64, &'static str, &'static str);

/// A migrator over `migrations`, oldest first.
pub(crate) fn migrator(migrations: &[Embedded]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// Checks that `migrations` are exactly the `.sql` files of
/// `migrations/<dir>/`: a file that is not registered would silently never run.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn assert_embedded(dir: &str, migrations: &[Embedded]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dir);
    let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .map(|p| {
            let stem = p.file_stem().unwrap().to_str().unwrap().to_owned();
            let (version, description) = stem.split_once('_').unwrap();
            (
                version.parse().unwrap(),
                description.replace('_', " "),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    let embedded: Vec<(i64, String, String)> = migrations
        .iter()
        .map(|&(v, d, s)| (v, d.to_owned(), s.to_owned()))
        .collect();
    assert_eq!(embedded, files, "{}", dir.display());
}
