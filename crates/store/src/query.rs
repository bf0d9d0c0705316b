//! The one query form both backends execute, and the little each backend
//! must say about itself.
//!
//! # Why the implementation is shared this way
//!
//! Both schemas follow the same conventions (see the migrations): unix seconds
//! in 64-bit integers, ids as hyphenated text, enums as their stable
//! identifiers, JSON as text. So every statement and every row decodes
//! identically; and SQLite accepts PostgreSQL's numbered `$1` placeholders
//! (sqlx maps `$N` to the N-th argument), so the SQL text is the same too.
//! Every port ([`crate::certificates`], [`crate::agents`], ...) is therefore
//! written once, on [`SqlStore<B>`](crate::SqlStore) for any [`Backend`] `B`.
//!
//! Writing that code generic over `sqlx::Database` directly would need a
//! dozen higher-ranked bounds (`for<'c> &'c mut DB::Connection: Executor<'c>`,
//! `String: Encode<DB> + Decode<DB> + Type<DB>`, ...) repeated on every
//! function, because Rust does not imply a trait's `where` clauses. Instead
//! the bounds appear exactly once, on the blanket impls of [`Exec`] and
//! [`Columns`]; values cross that line as [`Param`]s and rows are read through
//! [`Columns`], so the port modules need nothing but `B: Backend`.
//!
//! What genuinely differs stays in each backend module, as the constants of
//! [`Dialect`]: how a transaction begins and how a write transaction locks the
//! rows it is about to change (SQLite takes the database write lock at
//! `BEGIN IMMEDIATE`; PostgreSQL locks rows with `FOR UPDATE`), plus opening,
//! pooling and migrating, which share nothing worth sharing.
//!
//! [`Backend`] and what it rests on ([`Exec`], [`Dialect`], [`Columns`],
//! [`Sql`]) are `pub` in this private module only because the public
//! [`SqlStore<B>`](crate::SqlStore) is bounded by them: nothing outside the
//! crate can name them, so they stay sealed.

use std::borrow::Cow;
use std::future::Future;

use certflow_core::error::DomainResult;
use sqlx::{
    AssertSqlSafe, ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type,
};

use crate::error::corrupt;

/// A bind parameter, in one of the column representations the schemas use.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    /// TEXT, possibly NULL.
    Text(Option<String>),
    /// 64-bit INTEGER / BIGINT, possibly NULL.
    Int(Option<i64>),
    /// REAL / DOUBLE PRECISION.
    Real(f64),
    /// 0/1 in SQLite, BOOLEAN in PostgreSQL.
    Bool(bool),
    /// BLOB / BYTEA, possibly NULL.
    Bytes(Option<Vec<u8>>),
}

impl From<String> for Param {
    fn from(v: String) -> Self {
        Param::Text(Some(v))
    }
}

impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Param::Text(Some(v.to_owned()))
    }
}

impl From<Option<&str>> for Param {
    fn from(v: Option<&str>) -> Self {
        Param::Text(v.map(str::to_owned))
    }
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Param::Int(Some(v))
    }
}

impl From<Option<i64>> for Param {
    fn from(v: Option<i64>) -> Self {
        Param::Int(v)
    }
}

impl From<f64> for Param {
    fn from(v: f64) -> Self {
        Param::Real(v)
    }
}

impl From<bool> for Param {
    fn from(v: bool) -> Self {
        Param::Bool(v)
    }
}

impl From<Option<&[u8]>> for Param {
    fn from(v: Option<&[u8]>) -> Self {
        Param::Bytes(v.map(<[u8]>::to_vec))
    }
}

/// SQL text with numbered `$n` placeholders and the values they stand for.
///
/// Static statements number their placeholders by hand and [`bind`](Sql::bind)
/// in order; dynamic ones [`push`](Sql::push) text and
/// [`push_bind`](Sql::push_bind) values, which writes the next placeholder.
/// User input only ever goes into parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Sql {
    text: Cow<'static, str>,
    params: Vec<Param>,
}

impl Sql {
    /// A statement starting with `text`.
    pub(crate) fn new(text: &'static str) -> Self {
        Self {
            text: Cow::Borrowed(text),
            params: Vec::new(),
        }
    }

    /// Adds the value of the next placeholder already written in the text.
    pub(crate) fn bind(mut self, value: impl Into<Param>) -> Self {
        self.params.push(value.into());
        self
    }

    /// Appends SQL text (never user input).
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.to_mut().push_str(text);
        self
    }

    /// Appends a placeholder for `value`.
    pub(crate) fn push_bind(&mut self, value: impl Into<Param>) -> &mut Self {
        self.params.push(value.into());
        let placeholder = format!("${}", self.params.len());
        self.text.to_mut().push_str(&placeholder);
        self
    }

    /// Appends `(...)`, a placeholder for each of `values`: the list of an `IN`.
    pub(crate) fn push_list(&mut self, values: impl IntoIterator<Item = Param>) -> &mut Self {
        self.push("(");
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.push_bind(value);
        }
        self.push(")")
    }

    /// `head` (`INSERT INTO t (columns)`) with a `VALUES` group for each of
    /// `rows`; none without rows, for which a multi-row `INSERT` is no SQL.
    pub(crate) fn insert(head: &'static str, rows: Vec<Vec<Param>>) -> Option<Self> {
        if rows.is_empty() {
            return None;
        }
        let mut sql = Self::new(head);
        sql.push_values(rows);
        Some(sql)
    }

    /// Appends ` VALUES (...), (...)`: a placeholder for every value, a
    /// parenthesised group a row (a multi-row `INSERT` of a batch).
    pub(crate) fn push_values(&mut self, rows: impl IntoIterator<Item = Vec<Param>>) -> &mut Self {
        self.push(" VALUES ");
        for (i, row) in rows.into_iter().enumerate() {
            self.push(if i == 0 { "(" } else { ", (" });
            for (j, value) in row.into_iter().enumerate() {
                if j > 0 {
                    self.push(", ");
                }
                self.push_bind(value);
            }
            self.push(")");
        }
        self
    }

    /// This statement, then `next`: one text of two statements whose
    /// placeholders number on from this one's (for [`Dialect::SCRIPTS`]).
    pub(crate) fn then(mut self, next: Sql) -> Self {
        let text = next.numbered_after(self.params.len());
        let own = self.text.to_mut();
        own.push_str(";\n");
        own.push_str(&text);
        self.params.extend(next.params);
        self
    }

    /// `statements` as one statement: each but the last a data-modifying
    /// `WITH` entry, placeholders numbered on; one round trip where the
    /// backend runs no script ([`Dialect::SCRIPTS`]). The entries share one
    /// snapshot and cannot see each other's rows (foreign keys are checked
    /// at the statement's end), so only writes that read nothing another
    /// one writes may go together. `None` for no statement.
    pub(crate) fn together(statements: Vec<Sql>) -> Option<Sql> {
        let last = statements.len().checked_sub(1)?;
        let mut out = Sql {
            text: Cow::Owned(String::new()),
            params: Vec::new(),
        };
        for (i, next) in statements.into_iter().enumerate() {
            let text = next.numbered_after(out.params.len());
            let own = out.text.to_mut();
            if i < last {
                own.push_str(if i == 0 { "WITH " } else { ",\n" });
                own.push_str(&format!("w{i} AS ({text})"));
            } else {
                if i > 0 {
                    own.push('\n');
                }
                own.push_str(&text);
            }
            out.params.extend(next.params);
        }
        Some(out)
    }

    /// This statement's text with each placeholder `$n` made `$(n + offset)`:
    /// its place after `offset` parameters of statements before it.
    fn numbered_after(&self, offset: usize) -> String {
        let offset = offset as u64;
        map_placeholders(&self.text, |n| Some(format!("${}", n + offset)))
            .unwrap_or_else(|| self.text.clone().into_owned())
    }

    /// The SQL text, for tests and logs.
    #[cfg(test)]
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The same statement behind `prefix` (e.g. `EXPLAIN QUERY PLAN `), for tests.
    #[cfg(test)]
    pub(crate) fn prefixed(mut self, prefix: &str) -> Self {
        self.text = Cow::Owned(format!("{prefix}{}", self.text));
        self
    }

    fn into_query<DB>(self) -> sqlx::query::Query<'static, DB, DB::Arguments>
    where
        DB: Database,
        Option<String>: for<'q> Encode<'q, DB> + Type<DB>,
        Option<i64>: for<'q> Encode<'q, DB> + Type<DB>,
        f64: for<'q> Encode<'q, DB> + Type<DB>,
        bool: for<'q> Encode<'q, DB> + Type<DB>,
        Option<Vec<u8>>: for<'q> Encode<'q, DB> + Type<DB>,
    {
        let text = if DB::NAME == "SQLite" {
            sqlite_placeholders(&self.text)
        } else {
            self.text.into_owned()
        };
        // The text is ours: literals and placeholders, never input.
        let mut query = sqlx::query(AssertSqlSafe(text));
        for param in self.params {
            query = match param {
                Param::Text(v) => query.bind(v),
                Param::Int(v) => query.bind(v),
                Param::Real(v) => query.bind(v),
                Param::Bool(v) => query.bind(v),
                Param::Bytes(v) => query.bind(v),
            };
        }
        query
    }
}

/// The text with SQLite's cheapest placeholders for its `$n` ones: a bare
/// `?` each when they run `$1`, `$2`, ... in order, once each (every
/// `push_bind` statement), else `?n`.
///
/// Why: SQLite files `$n` as a *named* parameter. Preparing looks each name
/// up in a list with a linear scan, and sqlx asks for every parameter's
/// name when it binds, another linear scan; a batch's multi-row `INSERT`
/// with hundreds of parameters paid both quadratically (about 5 % of a
/// renewal's CPU on SQLite, BENCHMARKS.md). `?n` is a number, not looked
/// up when preparing; a bare `?` has no name at all, so sqlx binds it by
/// position. Quoted literals are left alone.
fn sqlite_placeholders(text: &str) -> String {
    let mut expected = 1u64;
    let in_order = map_placeholders(text, |n| {
        (n == expected).then(|| {
            expected += 1;
            "?".to_owned()
        })
    });
    in_order.unwrap_or_else(|| {
        map_placeholders(text, |n| Some(format!("?{n}"))).unwrap_or_else(|| text.to_owned())
    })
}

/// `text` with each `$n` placeholder outside quoted literals replaced by
/// what `placeholder(n)` says, or `None` as soon as it says `None`.
fn map_placeholders(
    text: &str,
    mut placeholder: impl FnMut(u64) -> Option<String>,
) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut quoted = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let digits = match c {
            '$' if !quoted => rest[1..].bytes().take_while(u8::is_ascii_digit).count(),
            _ => 0,
        };
        if digits > 0 {
            let number = rest[1..=digits].parse::<u64>().ok()?;
            out.push_str(&placeholder(number)?);
            rest = &rest[1 + digits..];
            continue;
        }
        if c == '\'' {
            quoted = !quoted;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Some(out)
}

/// Typed access to the columns of a result row, by name.
pub trait Columns: Send + Sync + 'static {
    /// A non-NULL TEXT column.
    fn text(&self, col: &str) -> DomainResult<String>;
    /// A TEXT column that may be NULL.
    fn opt_text(&self, col: &str) -> DomainResult<Option<String>>;
    /// A non-NULL integer column.
    fn int(&self, col: &str) -> DomainResult<i64>;
    /// An integer column that may be NULL.
    fn opt_int(&self, col: &str) -> DomainResult<Option<i64>>;
    /// A non-NULL floating-point column.
    fn real(&self, col: &str) -> DomainResult<f64>;
    /// A non-NULL boolean column.
    fn boolean(&self, col: &str) -> DomainResult<bool>;
    /// A BLOB / BYTEA column that may be NULL.
    fn opt_bytes(&self, col: &str) -> DomainResult<Option<Vec<u8>>>;
}

impl<R> Columns for R
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    i64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    f64: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    bool: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, col: &str) -> DomainResult<String> {
        self.try_get(col).map_err(|e| corrupt(col, e))
    }

    fn opt_text(&self, col: &str) -> DomainResult<Option<String>> {
        self.try_get(col).map_err(|e| corrupt(col, e))
    }

    fn int(&self, col: &str) -> DomainResult<i64> {
        self.try_get(col).map_err(|e| corrupt(col, e))
    }

    fn opt_int(&self, col: &str) -> DomainResult<Option<i64>> {
        self.try_get(col).map_err(|e| corrupt(col, e))
    }

    fn real(&self, col: &str) -> DomainResult<f64> {
        self.try_get(col).map_err(|e| corrupt(col, e))
    }

    fn boolean(&self, col: &str) -> DomainResult<bool> {
        self.try_get(col).map_err(|e| corrupt(col, e))
    }

    fn opt_bytes(&self, col: &str) -> DomainResult<Option<Vec<u8>>> {
        self.try_get(col).map_err(|e| corrupt(col, e))
    }
}

/// Runs [`Sql`] on a connection of the database.
pub trait Exec: Database {
    /// A result row.
    type Record: Columns;

    /// Runs a statement for its effect.
    fn execute(
        conn: &mut Self::Connection,
        sql: Sql,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_;

    /// Every row of a query.
    fn fetch_all(
        conn: &mut Self::Connection,
        sql: Sql,
    ) -> impl Future<Output = Result<Vec<Self::Record>, sqlx::Error>> + Send + '_;

    /// The first row of a query, if any.
    fn fetch_optional(
        conn: &mut Self::Connection,
        sql: Sql,
    ) -> impl Future<Output = Result<Option<Self::Record>, sqlx::Error>> + Send + '_;
}

impl<DB> Exec for DB
where
    DB: Database,
    DB::Row: Columns,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    Option<String>: for<'q> Encode<'q, DB> + Type<DB>,
    Option<i64>: for<'q> Encode<'q, DB> + Type<DB>,
    f64: for<'q> Encode<'q, DB> + Type<DB>,
    bool: for<'q> Encode<'q, DB> + Type<DB>,
    Option<Vec<u8>>: for<'q> Encode<'q, DB> + Type<DB>,
{
    type Record = DB::Row;

    async fn execute(conn: &mut Self::Connection, sql: Sql) -> Result<(), sqlx::Error> {
        conn.execute(sql.into_query::<DB>()).await.map(drop)
    }

    fn fetch_all(
        conn: &mut Self::Connection,
        sql: Sql,
    ) -> impl Future<Output = Result<Vec<Self::Record>, sqlx::Error>> + Send + '_ {
        conn.fetch_all(sql.into_query::<DB>())
    }

    fn fetch_optional(
        conn: &mut Self::Connection,
        sql: Sql,
    ) -> impl Future<Output = Result<Option<Self::Record>, sqlx::Error>> + Send + '_ {
        conn.fetch_optional(sql.into_query::<DB>())
    }
}

/// What a backend's SQL must say differently.
pub trait Dialect {
    /// Starts a write transaction.
    const BEGIN_WRITE: &'static str;
    /// Starts a read transaction in which every statement sees one snapshot.
    const BEGIN_READ: &'static str;
    /// Appended to a `SELECT` of a row the write transaction then changes,
    /// so that concurrent writers of that row queue up behind it.
    const FOR_UPDATE: &'static str;
    /// Run first when the default issuer changes, so that two changes
    /// cannot each clear the old default and both set a new one.
    const LOCK_ISSUERS: Option<&'static str>;
    /// Appended to a `SELECT` of rows a worker is about to claim, so that
    /// concurrent claimers pass over each other's rows instead of waiting.
    const SKIP_LOCKED: &'static str;
    /// A column of the labels of certificate `c` as one JSON object, `{}`
    /// without labels: a certificate with its labels in one statement.
    const LABELS_JSON: &'static str;
    /// Whether statements joined into one text ([`Sql::then`]) run in one
    /// call, each with its own parameters.
    const SCRIPTS: bool;
}

/// A database the shared implementation runs on.
pub trait Backend: Exec + Dialect {}

impl<B: Exec + Dialect> Backend for B {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_in_bind_order() {
        let mut sql = Sql::new("SELECT 1 FROM t WHERE a = $1").bind("x");
        sql.push(" AND b IN (")
            .push_bind(2_i64)
            .push(", ")
            .push_bind(None::<i64>)
            .push(")");
        assert_eq!(sql.text(), "SELECT 1 FROM t WHERE a = $1 AND b IN ($2, $3)");
        assert_eq!(
            sql.params,
            vec![
                Param::Text(Some("x".into())),
                Param::Int(Some(2)),
                Param::Int(None)
            ]
        );
    }

    #[test]
    fn values_number_row_after_row() {
        let mut sql = Sql::new("INSERT INTO t (a, b)");
        sql.push_values([
            vec![Param::from("x"), Param::from(1_i64)],
            vec![Param::from("y"), Param::from(2_i64)],
        ]);
        assert_eq!(sql.text(), "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)");
        assert_eq!(sql.params.len(), 4);
    }

    #[test]
    fn sqlite_gets_bare_placeholders_when_they_run_in_order() {
        assert_eq!(
            sqlite_placeholders("INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"
        );
        assert_eq!(sqlite_placeholders("SELECT 1"), "SELECT 1");
    }

    #[test]
    fn sqlite_gets_numbered_placeholders_otherwise() {
        // Reused, out of order, or skipping one: positions would be wrong.
        assert_eq!(
            sqlite_placeholders("SELECT $1 WHERE a = $2 OR b = $1"),
            "SELECT ?1 WHERE a = ?2 OR b = ?1"
        );
        assert_eq!(sqlite_placeholders("SELECT $2, $1"), "SELECT ?2, ?1");
        assert_eq!(sqlite_placeholders("SELECT $1, $3"), "SELECT ?1, ?3");
        assert_eq!(sqlite_placeholders("SELECT $10, $9"), "SELECT ?10, ?9");
    }

    #[test]
    fn sqlite_placeholders_leave_literals_and_other_dollars_alone() {
        assert_eq!(
            sqlite_placeholders(
                "SELECT json_extract(d, '$.a'), '$1 é', 'it''s $2' FROM t WHERE x = $1 AND y = $ AND z = $2"
            ),
            "SELECT json_extract(d, '$.a'), '$1 é', 'it''s $2' FROM t WHERE x = ? AND y = $ AND z = ?"
        );
    }

    #[test]
    fn a_script_numbers_on_from_the_statement_before() {
        let mut list = Sql::new("DELETE FROM t WHERE id IN ");
        list.push_list([Param::from("a"), Param::from("b")]);
        let script = Sql::new("UPDATE t SET x = $1 WHERE y = $2 AND note = '$1'")
            .bind(1_i64)
            .bind(2_i64)
            .then(list)
            .then(
                Sql::new("INSERT INTO u (a, b) VALUES ($2, $1)")
                    .bind("p")
                    .bind("q"),
            );
        assert_eq!(
            script.text(),
            "UPDATE t SET x = $1 WHERE y = $2 AND note = '$1';\n\
             DELETE FROM t WHERE id IN ($3, $4);\n\
             INSERT INTO u (a, b) VALUES ($6, $5)"
        );
        assert_eq!(
            script.params,
            vec![
                Param::Int(Some(1)),
                Param::Int(Some(2)),
                Param::Text(Some("a".into())),
                Param::Text(Some("b".into())),
                Param::Text(Some("p".into())),
                Param::Text(Some("q".into())),
            ]
        );
    }

    #[test]
    fn statements_together_are_with_entries_numbered_on() {
        let mut list = Sql::new("INSERT INTO t (id)");
        list.push_values([vec![Param::from("a")], vec![Param::from("b")]]);
        let one = Sql::together(vec![
            Sql::new("INSERT INTO s (x, note) VALUES ($1, '$1')").bind(1_i64),
            list,
            Sql::new("INSERT INTO u (a, b) VALUES ($2, $1)")
                .bind("p")
                .bind("q"),
        ])
        .unwrap();
        assert_eq!(
            one.text(),
            "WITH w0 AS (INSERT INTO s (x, note) VALUES ($1, '$1')),\n\
             w1 AS (INSERT INTO t (id) VALUES ($2), ($3))\n\
             INSERT INTO u (a, b) VALUES ($5, $4)"
        );
        assert_eq!(
            one.params,
            vec![
                Param::Int(Some(1)),
                Param::Text(Some("a".into())),
                Param::Text(Some("b".into())),
                Param::Text(Some("p".into())),
                Param::Text(Some("q".into())),
            ]
        );
        let alone = Sql::new("DELETE FROM t WHERE id = $1").bind("a");
        assert_eq!(Sql::together(vec![alone.clone()]), Some(alone));
        assert_eq!(Sql::together(Vec::new()), None);
    }

    /// A script runs every statement on SQLite, each with its own values,
    /// whether its placeholders run in order (bare `?`) or not (`?n`).
    #[tokio::test]
    async fn sqlite_runs_a_script_with_each_statement_s_values() {
        use sqlx::Connection as _;
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        let create = Sql::new("CREATE TABLE t (k TEXT, v INTEGER)");
        sqlx::Sqlite::execute(&mut conn, create).await.unwrap();
        for (first, second) in [("$1, $2", "$1, $2"), ("$1, $2", "$2, $1")] {
            let insert = |k: &str, v: i64, order: &str| {
                let text = if order == "$1, $2" {
                    "INSERT INTO t (k, v) VALUES ($1, $2)"
                } else {
                    "INSERT INTO t (v, k) VALUES ($2, $1)"
                };
                Sql::new(text).bind(k.to_owned()).bind(v)
            };
            let script = insert("a", 1, first).then(insert("b", 2, second)).then(
                Sql::new("UPDATE t SET v = v + $1 WHERE k = $2")
                    .bind(10_i64)
                    .bind("a"),
            );
            sqlx::Sqlite::execute(&mut conn, script).await.unwrap();
            let rows =
                sqlx::Sqlite::fetch_all(&mut conn, Sql::new("SELECT k, v FROM t ORDER BY k"))
                    .await
                    .unwrap();
            let got: Vec<(String, i64)> = rows
                .iter()
                .map(|r| (r.text("k").unwrap(), r.int("v").unwrap()))
                .collect();
            assert_eq!(got, vec![("a".into(), 11), ("b".into(), 2)]);
            sqlx::Sqlite::execute(&mut conn, Sql::new("DELETE FROM t"))
                .await
                .unwrap();
        }
    }

    /// The rewritten statements run on SQLite with their values where
    /// they belong, as the `$n` ones meant.
    #[tokio::test]
    async fn sqlite_runs_rewritten_placeholders_with_the_right_values() {
        use sqlx::Connection as _;
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        let sql = Sql::new("SELECT 'x$1' AS lit, $1 AS a, $2 AS b")
            .bind(10_i64)
            .bind(20_i64);
        let row = sqlx::Sqlite::fetch_optional(&mut conn, sql)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.text("lit").unwrap(), "x$1");
        assert_eq!((row.int("a").unwrap(), row.int("b").unwrap()), (10, 20));
        let sql = Sql::new("SELECT $2 AS a, $1 AS b, $2 + $1 AS c")
            .bind(1_i64)
            .bind(2_i64);
        let row = sqlx::Sqlite::fetch_optional(&mut conn, sql)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                row.int("a").unwrap(),
                row.int("b").unwrap(),
                row.int("c").unwrap()
            ),
            (2, 1, 3)
        );
    }
}
