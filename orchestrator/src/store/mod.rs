//! The store: Wavelift's state in a database, SQLite by default (a file, in WAL mode) or
//! PostgreSQL. Every change of a task's state goes through here, in transactions, so a
//! crash at any moment leaves a state the next process continues from.
//!
//! Queries are written once with `?` placeholders and rewritten for PostgreSQL (`$1`...);
//! the statements that differ between the two (the claim) are chosen by backend.

mod apply;
mod events;
mod reports;
mod steer;
mod tasks;
mod tokens;

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use migrations::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    Statement, TransactionOptions, TransactionTrait, Value,
};

pub use apply::{ApplyOptions, ApplyReport};
pub use events::{AttemptRow, EventRow, NewEvent};
pub use reports::{KindProgress, NewReport, ReportRow};
pub use steer::{Approval, MAX_NAME, MAX_REASON, RefusalKind, Refused, check_given};
pub use tasks::{AttemptRecord, ClaimedTask, Completion, Limit, TaskRow, TaskState, WaveCounts};
pub use tokens::{Permission, Role, TokenRow, token_hash};

#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    backend: DbBackend,
}

/// How long SQLite waits for a lock held by another process before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

impl Store {
    /// Opens (and for SQLite creates) the database and brings its schema up to date.
    pub async fn open(url: &str) -> anyhow::Result<Store> {
        Self::open_with(url, false).await
    }

    /// Like [`Store::open`]; `synchronous_full` makes SQLite sync every commit to disk
    /// (the default is NORMAL, which in WAL mode is durable across crashes of the
    /// process but not of the machine).
    pub async fn open_with(url: &str, synchronous_full: bool) -> anyhow::Result<Store> {
        Self::open_pool(url, synchronous_full, 1).await
    }

    /// Whether the (PostgreSQL) database at `url` holds a Wavelift store: its table of
    /// migrations. Read without creating anything, for the commands that only read or
    /// steer a store some `apply` wrote (`status`, `events`, the levers), which must
    /// not put an empty schema in whatever database they are pointed at.
    pub async fn holds_state(url: &str) -> anyhow::Result<bool> {
        refused_at_once(url).await?;
        let mut options = ConnectOptions::new(url.to_owned());
        options.sqlx_logging(false).max_connections(1);
        let db = match tokio::time::timeout(CONNECT_TIMEOUT, Database::connect(options)).await {
            Ok(connected) => connected.map_err(|err| anyhow::anyhow!(open_error(url, &err)))?,
            Err(_) => anyhow::bail!(
                "cannot open the database {}: no connection within {} s (is the server running and the address right?)",
                redact(url),
                CONNECT_TIMEOUT.as_secs()
            ),
        };
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT 1 AS found FROM information_schema.tables \
                 WHERE table_name = 'seaql_migrations' AND table_schema = current_schema()",
            ))
            .await?;
        let _ = db.close().await;
        Ok(row.is_some())
    }

    /// Like [`Store::open`], with `readers` SQLite connections: for the web, whose
    /// requests read at once (WAL lets readers run beside the writer); its few writes
    /// (approvals, levers) wait for the lock like any other writer.
    pub async fn open_readers(url: &str, readers: u32) -> anyhow::Result<Store> {
        Self::open_pool(url, false, readers.max(1)).await
    }

    async fn open_pool(
        url: &str,
        synchronous_full: bool,
        sqlite_connections: u32,
    ) -> anyhow::Result<Store> {
        // Nothing is kept in memory only, nor opened without a file or a host.
        if let Some(why) = waves::config::database_url_problem(url) {
            anyhow::bail!("{why}");
        }
        let mut options = ConnectOptions::new(url.to_owned());
        options.sqlx_logging(false);
        if url.starts_with("sqlite:") {
            create_sqlite_folder(url)?;
            // One connection for the executor: SQLite allows one writer; a pool would
            // only queue on locks.
            options
                .max_connections(sqlite_connections)
                .min_connections(1);
            options.map_sqlx_sqlite_opts(move |opts| {
                use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
                opts.create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(BUSY_TIMEOUT)
                    .foreign_keys(true)
                    .pragma("temp_store", "memory")
                    .synchronous(if synchronous_full {
                        SqliteSynchronous::Full
                    } else {
                        SqliteSynchronous::Normal
                    })
            });
        } else {
            options.max_connections(8);
        }
        // A server that refuses or does not answer is said within seconds: its pool
        // would try again for 30 (its later waits for a connection keep their default).
        if !url.starts_with("sqlite:") {
            refused_at_once(url).await?;
        }
        let connecting = Database::connect(options);
        let connected = if url.starts_with("sqlite:") {
            Ok(connecting.await)
        } else {
            tokio::time::timeout(CONNECT_TIMEOUT, connecting).await
        };
        let db = match connected {
            Ok(connected) => connected.map_err(|err| anyhow::anyhow!(open_error(url, &err)))?,
            Err(_) => anyhow::bail!(
                "cannot open the database {}: no connection within {} s (is the server running and the address right?)",
                redact(url),
                CONNECT_TIMEOUT.as_secs()
            ),
        };
        Migrator::up(&db, None)
            .await
            .with_context(|| format!("cannot bring the schema of {} up to date", redact(url)))?;
        let backend = db.get_database_backend();
        Ok(Store { db, backend })
    }

    pub fn is_postgres(&self) -> bool {
        self.backend == DbBackend::Postgres
    }

    /// A statement with `?` placeholders, numbered for PostgreSQL.
    pub(crate) fn stmt(&self, sql: &str, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(self.backend, numbered(self.backend, sql), values)
    }

    /// A derived table of the rows passed as one JSON parameter (an array of arrays,
    /// see [`json_param`]), with these columns and `ord`, the row's place in the array
    /// (an insert orders by it). One statement and
    /// one bound value carry a whole batch, and its text is the same for every batch,
    /// so the database prepares it once.
    pub(crate) fn json_rows(&self, columns: &[(&str, JsonColumn)]) -> String {
        let mut select = Vec::with_capacity(columns.len());
        for (i, (name, kind)) in columns.iter().enumerate() {
            select.push(match (self.is_postgres(), kind) {
                (false, _) => format!("(value ->> {i}) AS {name}"),
                (true, JsonColumn::Text) => format!("(e.v ->> {i}) AS {name}"),
                (true, JsonColumn::Int) => format!("(e.v ->> {i})::bigint AS {name}"),
                (true, JsonColumn::Bool) => format!("(e.v ->> {i})::boolean AS {name}"),
            });
        }
        let select = select.join(", ");
        if self.is_postgres() {
            format!(
                "(SELECT {select}, e.n AS ord FROM json_array_elements(CAST(? AS json)) \
                 WITH ORDINALITY AS e(v, n))"
            )
        } else {
            format!("(SELECT {select}, key AS ord FROM jsonb_each(?))")
        }
    }

    /// The strings of one JSON array parameter as a set, for `column IN ...`.
    pub(crate) fn json_strings(&self) -> &'static str {
        if self.is_postgres() {
            "(SELECT json_array_elements_text(CAST(? AS json)))"
        } else {
            "(SELECT value FROM json_each(?))"
        }
    }

    /// A transaction for read-then-write work: on SQLite it takes the write lock at the
    /// start (BEGIN IMMEDIATE), so two writers never deadlock on an upgrade.
    pub(crate) async fn write_transaction(&self) -> anyhow::Result<DatabaseTransaction> {
        let options = TransactionOptions {
            sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        };
        Ok(self.db.begin_with_options(options).await?)
    }

    pub(crate) fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Whether the database answers now as a run needs it: a write transaction begun
    /// (on SQLite the write lock taken, which a ping would not) and rolled back.
    pub async fn answers(&self) -> anyhow::Result<()> {
        self.write_transaction().await?.rollback().await?;
        Ok(())
    }

    pub async fn meta_get(&self, key: &str) -> anyhow::Result<Option<String>> {
        let row = self
            .db
            .query_one_raw(self.stmt("SELECT value FROM meta WHERE key = ?", vec![key.into()]))
            .await?;
        Ok(match row {
            Some(row) => Some(row.try_get::<String>("", "value")?),
            None => None,
        })
    }

    pub async fn meta_set(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let sql = "INSERT INTO meta (key, value) VALUES (?, ?) \
                   ON CONFLICT (key) DO UPDATE SET value = excluded.value";
        self.db
            .execute_raw(self.stmt(sql, vec![key.into(), value.into()]))
            .await?;
        Ok(())
    }
}

/// How a column of [`Store::json_rows`] is typed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum JsonColumn {
    Text,
    Int,
    Bool,
}

/// The value bound for [`Store::json_rows`] or [`Store::json_strings`].
pub(crate) fn json_param(rows: &impl serde::Serialize) -> anyhow::Result<Value> {
    Ok(Value::from(serde_json::to_string(rows)?))
}

fn numbered(backend: DbBackend, sql: &str) -> String {
    if backend != DbBackend::Postgres {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// `sqlite://path/state.db` needs its folder before SQLite can create the file.
fn create_sqlite_folder(url: &str) -> anyhow::Result<()> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or("");
    if let Some(parent) = Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create the folder {}", parent.display()))?;
    }
    Ok(())
}

/// How long opening a PostgreSQL database may take (its pool would try for 30 s).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the database did not open, said once (sqlx's own text repeats itself), with what
/// to do where the cause is known.
fn open_error(url: &str, err: &sea_orm::DbErr) -> String {
    use sea_orm::sqlx;
    let shown = redact(url);
    let sqlx_error = match err {
        sea_orm::DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e)) => Some(e.as_ref()),
        _ => None,
    };
    match sqlx_error {
        Some(sqlx::Error::Database(db)) if db.code().as_deref() == Some("3D000") => {
            let name = url
                .split('?')
                .next()
                .and_then(|u| u.rsplit('/').next())
                .unwrap_or("NAME");
            format!(
                "cannot open the database {shown}: {}; create it (createdb {name}, or CREATE DATABASE {name} as a user who may) or name another (--database-url, WAVELIFT_DATABASE_URL or the configuration's database.url)",
                db.message()
            )
        }
        Some(sqlx::Error::Database(db)) => {
            format!("cannot open the database {shown}: {}", db.message())
        }
        Some(sqlx::Error::Io(io)) => format!(
            "cannot open the database {shown}: {io} (is the server running and the address right?)"
        ),
        Some(other) => format!("cannot open the database {shown}: {other}"),
        None => format!("cannot open the database {shown}: {err}"),
    }
}

/// The database's error in `err`, and sqlx's under it when there is one.
fn database_error(err: &anyhow::Error) -> Option<(&sea_orm::DbErr, Option<&sea_orm::sqlx::Error>)> {
    use sea_orm::{DbErr, RuntimeErr};
    let db = err.chain().find_map(|e| e.downcast_ref::<DbErr>())?;
    let sqlx_error = match db {
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => Some(e.as_ref()),
        _ => None,
    };
    Some((db, sqlx_error))
}

/// What the database said, once, when `err` came from it while a command ran (sqlx's
/// own text repeats itself); `None` for any other error.
pub fn database_failure(err: &anyhow::Error) -> Option<String> {
    let (db, sqlx_error) = database_error(err)?;
    Some(match sqlx_error {
        Some(sea_orm::sqlx::Error::Database(d)) => d.message().to_owned(),
        Some(other) => other.to_string(),
        None => db.to_string(),
    })
}

/// Whether `err` is a database that stopped answering for a while, which a run waits
/// out: the connection lost, refused or timed out (a server restarting, a network down
/// for a moment), PostgreSQL shutting down or starting (class 08 but a protocol
/// violation, class 57P but a database dropped), SQLite busy past its timeout. Anything
/// else (a database or table gone, a certificate refused, a full disk, a constraint) is
/// not waited for.
pub fn database_unreachable(err: &anyhow::Error) -> bool {
    use sea_orm::{ConnAcquireErr, DbErr, sqlx};
    let Some((db, sqlx_error)) = database_error(err) else {
        return false;
    };
    match (db, sqlx_error) {
        (DbErr::ConnectionAcquire(ConnAcquireErr::Timeout), _) => true,
        // A connection closed halfway through its opening (a proxy whose database is
        // down) reads as a protocol error.
        (DbErr::Conn(_), Some(sqlx::Error::Protocol(_))) => true,
        (_, Some(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)) => true,
        (_, Some(sqlx::Error::Database(d))) => d.code().is_some_and(|code| {
            (code.starts_with("08") && code != "08P01")
                || (code.starts_with("57P") && code != "57P04")
                || matches!(code.as_ref(), "5" | "261" | "517" | "773")
        }),
        _ => false,
    }
}

/// A server whose port refuses connections, said at once: the pool would try again
/// until its timeout, and its error would not say "refused". Only for a `host:port` in
/// the URL (not a Unix socket); a server that does not answer is left to the timeout.
async fn refused_at_once(url: &str) -> anyhow::Result<()> {
    let Some(rest) = url.split_once("://").map(|(_, rest)| rest) else {
        return Ok(());
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    if host_port.is_empty() || host_port.contains('%') {
        return Ok(());
    }
    let address = if host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !host_port.ends_with(']')
    {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    match tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(&address),
    )
    .await
    {
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => anyhow::bail!(
            "cannot open the database {}: {address} refused the connection (is the server running and the address right?)",
            redact(url)
        ),
        _ => Ok(()),
    }
}

/// A URL as it may be shown: without a password.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user_info, host)) if user_info.contains(':') => {
                let user = user_info.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            _ => url.to_owned(),
        },
        None => url.to_owned(),
    }
}
