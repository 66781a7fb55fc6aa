//! The PostgreSQL metadata store, for several nodes sharing one database.
//!
//! One connection per [`MetaStore`](super::MetaStore), owned by a thread of its own: the
//! `postgres` client drives a private runtime, which must not run on a thread of the caller's
//! (an async server's handlers call the store too). Callers hand it statements over a channel.
//!
//! Semantics match the SQLite store's:
//! - every write runs in one transaction that first takes a transaction-scoped advisory lock, so
//!   writes are serialized across all nodes, as SQLite serializes writers (audit hash chains,
//!   ledger balances, job claims and leases stay consistent);
//! - every read runs in one `REPEATABLE READ READ ONLY` transaction, one consistent view;
//! - migrations run under an advisory lock, so nodes starting together migrate once;
//! - text compares byte-wise (`COLLATE "C"`), so every `ORDER BY` matches SQLite's.
//!
//! A lost connection is re-established at the start of the next transaction; the transaction
//! that was under way fails and commits nothing.
//!
//! TLS follows libpq's parameters: `sslmode=require&sslrootcert=/path/ca.pem` connects over TLS
//! (rustls) and verifies the server's certificate and name against that CA; `prefer` (the
//! default) with a CA file tries TLS first. There is no mode that skips verification.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, mpsc};

use bytes::BytesMut;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, NoTls, Statement};

use super::sql::{Backend, Db, DbError, Row, Value, numbered_placeholders};
use crate::error::{Error, Result};

/// Serializes writes across nodes (`pg_advisory_xact_lock`); "soramai" in ASCII, then 1.
const WRITE_LOCK: i64 = 0x736f_7261_6d61_6901;
/// Serializes migrations across nodes.
const MIGRATE_LOCK: i64 = 0x736f_7261_6d61_6902;

/// The schema, as numbered migrations. Version 1 is SQLite's schema at its version 6, in
/// PostgreSQL's types: BIGINT for INTEGER, DOUBLE PRECISION for REAL, BYTEA for BLOB, identity
/// columns for AUTOINCREMENT, and byte-wise collation for every text column.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE system_keys (
        name TEXT COLLATE "C" PRIMARY KEY,
        wrapped BYTEA NOT NULL,
        root_fingerprint TEXT COLLATE "C" NOT NULL
    );
    CREATE TABLE tenants (
        id TEXT COLLATE "C" PRIMARY KEY,
        tier TEXT COLLATE "C" NOT NULL,
        status TEXT COLLATE "C" NOT NULL CHECK (status IN ('active', 'deleted')),
        key_custody TEXT COLLATE "C" NOT NULL CHECK (key_custody IN ('operator', 'customer')),
        created_at BIGINT NOT NULL,
        deleted_at BIGINT,
        store TEXT COLLATE "C" NOT NULL DEFAULT 'shared' CHECK (store IN ('shared', 'dedicated')),
        log_query_text BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE tenant_keys (
        tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
        version BIGINT NOT NULL,
        state TEXT COLLATE "C" NOT NULL CHECK (state IN ('primary', 'active', 'retired')),
        wrapped BYTEA,
        root_fingerprint TEXT COLLATE "C" NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, version)
    );
    CREATE TABLE objects (
        tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
        path TEXT COLLATE "C" NOT NULL,
        blob TEXT COLLATE "C" NOT NULL,
        key_version BIGINT NOT NULL,
        plaintext_len BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        scope TEXT COLLATE "C" NOT NULL DEFAULT '',
        PRIMARY KEY (tenant_id, path)
    );
    CREATE TABLE api_keys (
        id TEXT COLLATE "C" PRIMARY KEY,
        tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
        name TEXT COLLATE "C" NOT NULL,
        secret_hash BYTEA NOT NULL,
        scopes TEXT COLLATE "C" NOT NULL,
        pool TEXT COLLATE "C",
        created_at BIGINT NOT NULL,
        expires_at BIGINT,
        revoked_at BIGINT,
        replaced_by TEXT COLLATE "C",
        last_used_at BIGINT
    );
    CREATE INDEX api_keys_tenant ON api_keys(tenant_id);
    CREATE TABLE datasets (
        id TEXT COLLATE "C" PRIMARY KEY,
        tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
        name TEXT COLLATE "C" NOT NULL,
        bytes BIGINT NOT NULL,
        examples BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX datasets_tenant ON datasets(tenant_id);
    CREATE TABLE secrets (
        tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
        name TEXT COLLATE "C" NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, name)
    );
    CREATE TABLE jobs (
        id TEXT COLLATE "C" PRIMARY KEY,
        tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
        kind TEXT COLLATE "C" NOT NULL,
        spec TEXT COLLATE "C" NOT NULL,
        pool TEXT COLLATE "C" NOT NULL,
        state TEXT COLLATE "C" NOT NULL,
        progress DOUBLE PRECISION NOT NULL DEFAULT 0,
        attempts BIGINT NOT NULL DEFAULT 0,
        max_attempts BIGINT NOT NULL,
        lease_owner TEXT COLLATE "C",
        lease_expires_at BIGINT,
        cancel_requested BIGINT NOT NULL DEFAULT 0,
        result TEXT COLLATE "C",
        error TEXT COLLATE "C",
        created_at BIGINT NOT NULL,
        started_at BIGINT,
        finished_at BIGINT,
        checkpoint_step BIGINT,
        charged_tokens BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_claim ON jobs(state, pool, created_at);
    CREATE INDEX jobs_tenant ON jobs(tenant_id);
    CREATE TABLE job_events (
        job_id TEXT COLLATE "C" NOT NULL REFERENCES jobs(id),
        seq BIGINT NOT NULL,
        at BIGINT NOT NULL,
        kind TEXT COLLATE "C" NOT NULL,
        data TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (job_id, seq)
    );
    CREATE TABLE audit_log (
        tenant_id TEXT COLLATE "C" NOT NULL,
        seq BIGINT NOT NULL,
        at BIGINT NOT NULL,
        actor TEXT COLLATE "C" NOT NULL,
        action TEXT COLLATE "C" NOT NULL,
        target TEXT COLLATE "C" NOT NULL,
        detail TEXT COLLATE "C" NOT NULL,
        prev_hash BYTEA NOT NULL,
        hash BYTEA NOT NULL,
        PRIMARY KEY (tenant_id, seq)
    );
    CREATE TABLE audit_heads (
        tenant_id TEXT COLLATE "C" PRIMARY KEY,
        seq BIGINT NOT NULL,
        hash BYTEA NOT NULL,
        tag BYTEA NOT NULL
    );
    CREATE TABLE usage_events (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant_id TEXT COLLATE "C" NOT NULL,
        at BIGINT NOT NULL,
        kind TEXT COLLATE "C" NOT NULL,
        model TEXT COLLATE "C" NOT NULL,
        adapter TEXT COLLATE "C",
        input_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL,
        latency_ms BIGINT NOT NULL,
        status TEXT COLLATE "C" NOT NULL
    );
    CREATE INDEX usage_tenant_at ON usage_events(tenant_id, at);
    CREATE TABLE ledger (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        receipt TEXT COLLATE "C" NOT NULL UNIQUE,
        tenant_id TEXT COLLATE "C" NOT NULL,
        at BIGINT NOT NULL,
        kind TEXT COLLATE "C" NOT NULL CHECK (kind IN ('grant', 'usage', 'refund')),
        amount BIGINT NOT NULL,
        balance_after BIGINT NOT NULL,
        reference TEXT COLLATE "C" NOT NULL
    );
    CREATE INDEX ledger_tenant ON ledger(tenant_id, id);
    CREATE TABLE access_log (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        tenant_id TEXT COLLATE "C" NOT NULL,
        at BIGINT NOT NULL,
        actor TEXT COLLATE "C" NOT NULL,
        resource TEXT COLLATE "C" NOT NULL,
        action TEXT COLLATE "C" NOT NULL,
        detail TEXT COLLATE "C"
    );
    CREATE INDEX access_log_tenant_at ON access_log(tenant_id, at);
    CREATE TABLE scope_keys (
        tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
        scope TEXT COLLATE "C" NOT NULL,
        wrapped BYTEA NOT NULL,
        tenant_key_version BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, scope)
    );
    CREATE TABLE base_models (
        id TEXT COLLATE "C" PRIMARY KEY,
        path TEXT COLLATE "C" NOT NULL,
        registered_at BIGINT NOT NULL
    );
    CREATE TABLE fine_tuned_models (
        id TEXT COLLATE "C" PRIMARY KEY,
        tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
        base TEXT COLLATE "C" NOT NULL,
        job_id TEXT COLLATE "C" NOT NULL,
        trained_tokens BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX fine_tuned_models_tenant ON fine_tuned_models(tenant_id);
"#,
    // 2: SQLite's version 7, break-glass access grants
    r#"
    CREATE TABLE access_grants (
        id TEXT COLLATE "C" PRIMARY KEY,
        tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
        operator_tenant TEXT COLLATE "C" NOT NULL,
        operator_key TEXT COLLATE "C" NOT NULL,
        key_id TEXT COLLATE "C" NOT NULL,
        reason TEXT COLLATE "C" NOT NULL,
        scopes TEXT COLLATE "C" NOT NULL,
        ttl_seconds BIGINT NOT NULL,
        status TEXT COLLATE "C" NOT NULL CHECK (status IN ('pending', 'active', 'revoked', 'expired')),
        requested_at BIGINT NOT NULL,
        approved_at BIGINT,
        expires_at BIGINT NOT NULL,
        ended_at BIGINT,
        ended_by TEXT COLLATE "C"
    );
    CREATE INDEX access_grants_tenant ON access_grants(tenant_id);
    CREATE INDEX access_grants_operator ON access_grants(operator_tenant);
    CREATE INDEX access_grants_due ON access_grants(status, expires_at);
    ALTER TABLE api_keys ADD COLUMN grant_id TEXT COLLATE "C";
"#,
    // 3: SQLite's version 8, backup targets and the deletions still to reach them
    r#"
    CREATE TABLE backup_targets (
        url TEXT COLLATE "C" PRIMARY KEY,
        added_at BIGINT NOT NULL
    );
    CREATE TABLE backup_pending (
        url TEXT COLLATE "C" NOT NULL,
        tenant_id TEXT COLLATE "C" NOT NULL,
        kind TEXT COLLATE "C" NOT NULL CHECK (kind IN ('closed', 'scope')),
        at BIGINT NOT NULL,
        PRIMARY KEY (url, tenant_id, kind)
    );
"#,
    // 4: SQLite's version 9, account closures waiting for their purge
    r#"
    CREATE TABLE tenant_closures (
        tenant_id TEXT COLLATE "C" PRIMARY KEY REFERENCES tenants(id),
        requested_at BIGINT NOT NULL,
        purge_at BIGINT NOT NULL
    );
"#,
    // 5: SQLite's version 10, customers' own GGUF base models
    r#"
    CREATE TABLE custom_models (
        id TEXT COLLATE "C" PRIMARY KEY,
        tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
        name TEXT COLLATE "C" NOT NULL,
        bytes BIGINT NOT NULL,
        sha256 TEXT COLLATE "C" NOT NULL,
        architecture TEXT COLLATE "C" NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX custom_models_tenant ON custom_models(tenant_id);
"#,
    // 6: SQLite's version 11, people
    r#"
    CREATE TABLE users (
        id TEXT COLLATE "C" PRIMARY KEY,
        email TEXT COLLATE "C" NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        totp_wrapped BYTEA,
        totp_enabled BIGINT NOT NULL DEFAULT 0,
        totp_last_step BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE members (
        tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
        user_id TEXT COLLATE "C" NOT NULL REFERENCES users(id),
        role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
        created_at BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, user_id)
    );
    CREATE INDEX members_user ON members(user_id);
    CREATE TABLE invitations (
        id TEXT COLLATE "C" PRIMARY KEY,
        tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
        email TEXT NOT NULL,
        role TEXT NOT NULL,
        token_hash BYTEA NOT NULL UNIQUE,
        invited_by TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        accepted_at BIGINT
    );
    CREATE INDEX invitations_tenant ON invitations(tenant_id);
    CREATE TABLE web_sessions (
        token_hash BYTEA PRIMARY KEY,
        user_id TEXT COLLATE "C" NOT NULL REFERENCES users(id),
        created_at BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX web_sessions_user ON web_sessions(user_id);
    CREATE TABLE sign_in_failures (
        email_hash BYTEA PRIMARY KEY,
        failures BIGINT NOT NULL,
        locked_until BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE password_resets (
        token_hash BYTEA PRIMARY KEY,
        user_id TEXT COLLATE "C" NOT NULL REFERENCES users(id),
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
"#,
    // 7: SQLite's version 12, passkeys
    r#"
    CREATE TABLE passkeys (
        id TEXT COLLATE "C" PRIMARY KEY,
        user_id TEXT COLLATE "C" NOT NULL REFERENCES users(id),
        credential_id TEXT COLLATE "C" NOT NULL UNIQUE,
        name TEXT NOT NULL,
        passkey TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        last_used_at BIGINT
    );
    CREATE INDEX passkeys_user ON passkeys(user_id);
    CREATE TABLE webauthn_ceremonies (
        id_hash BYTEA PRIMARY KEY,
        user_id TEXT COLLATE "C" NOT NULL REFERENCES users(id),
        kind TEXT NOT NULL CHECK (kind IN ('register', 'sign_in')),
        state TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    );
"#,
    // 8: SQLite's version 13, single sign-on
    r#"
    CREATE TABLE sso_configs (
        tenant_id TEXT COLLATE "C" PRIMARY KEY REFERENCES tenants(id),
        issuer TEXT NOT NULL,
        client_id TEXT NOT NULL,
        default_role TEXT,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE sso_links (
        issuer TEXT COLLATE "C" NOT NULL,
        subject TEXT COLLATE "C" NOT NULL,
        user_id TEXT COLLATE "C" NOT NULL REFERENCES users(id),
        created_at BIGINT NOT NULL,
        PRIMARY KEY (issuer, subject)
    );
    ALTER TABLE web_sessions ADD COLUMN tenant_id TEXT COLLATE "C";
    CREATE TABLE sso_logins (
        state_hash BYTEA PRIMARY KEY,
        tenant_id TEXT COLLATE "C" NOT NULL REFERENCES tenants(id),
        nonce TEXT NOT NULL,
        pkce_verifier TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    "#,
    // 9: SQLite's version 14, a running job's commit under way
    r#"
    ALTER TABLE jobs ADD COLUMN committing BIGINT NOT NULL DEFAULT 0;
    "#,
];

/// The tables holding wrapped keys: rewritten after a key is destroyed.
const KEY_TABLES: &str = "tenant_keys, scope_keys";

enum Cmd {
    Begin { sql: String, reply: mpsc::SyncSender<Result<()>> },
    End { commit: bool, reply: mpsc::SyncSender<Result<()>> },
    Batch { sql: String, reply: mpsc::SyncSender<Result<()>> },
    Execute { sql: String, params: Vec<Value>, reply: mpsc::SyncSender<Result<usize>> },
    Query { sql: String, params: Vec<Value>, reply: mpsc::SyncSender<Result<Vec<Row>>> },
}

/// A connection to PostgreSQL, served by its own thread.
pub(crate) struct PgStore {
    /// The channel to the connection's thread. Its lock is held for a whole transaction.
    conn: Mutex<mpsc::Sender<Cmd>>,
    target: String,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore").field("target", &self.target).finish()
    }
}

fn pg_err(e: postgres::Error) -> Error {
    // The server's own message (with its SQLSTATE) when there is one: it names the statement's
    // failure, never a bound value.
    let text = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    Error::Database(DbError::Postgres(text))
}

fn gone() -> Error {
    Error::Database(DbError::Postgres("the connection's thread has stopped".into()))
}

/// Whether the server ended the session: the socket closed, or the server said so first
/// (SQLSTATE class 08, connection exception, or 57P, operator intervention: a shutdown, a
/// restart, `pg_terminate_backend`), which can arrive before the client sees the close.
fn session_lost(e: &postgres::Error) -> bool {
    e.is_closed()
        || e.as_db_error().is_some_and(|db| {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("57P")
        })
}

/// Where a config points, without its password.
fn describe(config: &postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!(
        "{}:{:?}/{} as {}",
        hosts.join(","),
        config.get_ports(),
        config.get_dbname().unwrap_or("-"),
        config.get_user().unwrap_or("-")
    )
}

/// How the connection is secured: plain, or TLS (rustls) verifying the server against a CA.
#[derive(Clone)]
enum Tls {
    None,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl Tls {
    /// From libpq's `sslmode` (parsed by `postgres`) and `sslrootcert` (taken out of the URL here,
    /// which `postgres` does not know). Certificates are always verified: `require` without a CA
    /// file is refused rather than trusting any certificate.
    fn for_config(config: &postgres::Config, root_cert: Option<&str>) -> Result<Self> {
        use postgres::config::SslMode;
        let mode = config.get_ssl_mode();
        let Some(path) = root_cert else {
            return match mode {
                SslMode::Require => Err(Error::InvalidArgument(
                    "sslmode=require needs sslrootcert=<CA file>: the server's certificate is always verified".into(),
                )),
                _ => Ok(Tls::None),
            };
        };
        if mode == SslMode::Disable {
            return Ok(Tls::None);
        }
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let bad = |e: &dyn std::fmt::Display| Error::InvalidArgument(format!("sslrootcert {path}: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        if roots.is_empty() {
            return Err(bad(&"no certificate"));
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::InvalidArgument(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(tls)))
    }

    fn connect(&self, config: &postgres::Config) -> std::result::Result<Client, postgres::Error> {
        match self {
            Tls::None => config.connect(NoTls),
            Tls::Rustls(tls) => config.connect(tls.clone()),
        }
    }
}

/// Takes libpq's `sslrootcert` out of a URL's query string: `(url without it, its value)`.
fn split_root_cert(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None) };
    let mut root = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix("sslrootcert=") {
            Some(v) => {
                root = Some(v.replace("%2F", "/").replace("%2f", "/"));
                false
            }
            None => true,
        })
        .collect();
    if kept.is_empty() { (base.to_owned(), root) } else { (format!("{base}?{}", kept.join("&")), root) }
}

impl PgStore {
    pub(crate) fn connect(url: &str) -> Result<Self> {
        let (url, root_cert) = split_root_cert(url);
        let mut config: postgres::Config =
            url.parse().map_err(|e| Error::InvalidArgument(format!("the PostgreSQL connection string: {e}")))?;
        let tls = Tls::for_config(&config, root_cert.as_deref())?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("soramai");
        }
        let target = describe(&config);
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new().name("soramai-postgres".into()).spawn(move || match tls.connect(&config) {
            Ok(client) => {
                let _ = ready_tx.send(Ok(()));
                Connection { config, tls, client, statements: HashMap::new(), in_transaction: false }.serve(rx);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(pg_err(e)));
            }
        })?;
        ready_rx.recv().map_err(|_| gone())??;
        let store = Self { conn: Mutex::new(tx), target };
        store.migrate()?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, mpsc::Sender<Cmd>> {
        // A panic mid-transaction leaves the lock poisoned and the transaction open; the
        // connection's thread rolls it back at the next `Begin`.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn transaction<T>(&self, begin: String, f: impl FnOnce(&Db<'_>) -> Result<T>) -> Result<T> {
        let sender = self.lock();
        let conn = PgConn { sender: &sender };
        conn.call(|reply| Cmd::Begin { sql: begin, reply })?;
        match f(&Db::new(&conn)) {
            Ok(v) => {
                conn.call(|reply| Cmd::End { commit: true, reply })?;
                Ok(v)
            }
            Err(e) => {
                // The error that matters is `e`; a failed rollback leaves nothing committed either.
                let _ = conn.call(|reply| Cmd::End { commit: false, reply });
                Err(e)
            }
        }
    }

    pub(crate) fn write<T>(&self, f: impl FnOnce(&Db<'_>) -> Result<T>) -> Result<T> {
        self.transaction(format!("BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITE_LOCK})"), f)
    }

    pub(crate) fn read<T>(&self, f: impl FnOnce(&Db<'_>) -> Result<T>) -> Result<T> {
        self.transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY".into(), f)
    }

    fn migrate(&self) -> Result<()> {
        let sender = self.lock();
        let conn = PgConn { sender: &sender };
        conn.call(|reply| Cmd::Begin { sql: format!("BEGIN; SELECT pg_advisory_xact_lock({MIGRATE_LOCK})"), reply })?;
        let out = (|| {
            conn.batch("CREATE TABLE IF NOT EXISTS soramai_schema (version BIGINT NOT NULL)")?;
            let db = Db::new(&conn);
            let version: Option<i64> = db.query_row("SELECT MAX(version) FROM soramai_schema", (), |r| r.get(0))?;
            let version = version.unwrap_or(0);
            let known = MIGRATIONS.len() as i64;
            if version > known {
                return Err(Error::InvalidArgument(format!(
                    "the metadata database is at schema version {version}, newer than this build's {known}"
                )));
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
                conn.batch(sql)?;
                db.execute("INSERT INTO soramai_schema (version) VALUES (?1)", [i + 1])?;
            }
            Ok(())
        })();
        let commit = out.is_ok();
        let end = conn.call(|reply| Cmd::End { commit, reply });
        out.and(end)
    }

    /// Rewrites the key tables so that no dead row version keeps a destroyed wrapped key (what
    /// `secure_delete` and the WAL checkpoint do for SQLite). A dead row is kept while an older
    /// snapshot could still see it: another node's read, autovacuum's analyze, or a session of
    /// another database whose snapshot counts for every database (`CREATE DATABASE` has one). So
    /// this first waits, up to 10 s, for every snapshot older than the deletion to end (and every
    /// transaction that began writing before it: between statements it holds an id but no
    /// snapshot, and still holds back what VACUUM may remove), rewrites,
    /// and rewrites again (up to three times) if such a snapshot appeared meanwhile. Write-ahead
    /// log segments and backups keep older pages until PostgreSQL recycles them, as for any row.
    pub(crate) fn purge_key_tables(&self) -> Result<()> {
        let sender = self.lock();
        let conn = PgConn { sender: &sender };
        let db = Db::new(&conn);
        // The 32-bit transaction id after the deletion, comparable with `backend_xmin`.
        let after: i64 = db.query_row("SELECT txid_current() % 4294967296", (), |r| r.get(0))?;
        let older = || -> Result<i64> {
            db.query_row(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE pid <> pg_backend_pid()
                   AND (CAST(CAST(backend_xmin AS TEXT) AS BIGINT) < ?1
                        OR CAST(CAST(backend_xid AS TEXT) AS BIGINT) < ?1)",
                [after],
                |r| r.get(0),
            )
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for _ in 0..3 {
            while older()? > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            conn.batch(&format!("VACUUM (FULL) {KEY_TABLES}"))?;
            if older()? == 0 || std::time::Instant::now() >= deadline {
                break;
            }
        }
        Ok(())
    }
}

/// The caller's side of the connection, for one transaction.
struct PgConn<'a> {
    sender: &'a mpsc::Sender<Cmd>,
}

impl PgConn<'_> {
    fn call<T>(&self, make: impl FnOnce(mpsc::SyncSender<Result<T>>) -> Cmd) -> Result<T> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.sender.send(make(reply)).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }

    fn batch(&self, sql: &str) -> Result<()> {
        self.call(|reply| Cmd::Batch { sql: sql.to_owned(), reply })
    }
}

impl Backend for PgConn<'_> {
    fn execute_values(&self, sql: &str, params: Vec<Value>) -> Result<usize> {
        self.call(|reply| Cmd::Execute { sql: numbered_placeholders(sql), params, reply })
    }

    fn query_values(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        self.call(|reply| Cmd::Query { sql: numbered_placeholders(sql), params, reply })
    }
}

/// The connection's thread.
struct Connection {
    config: postgres::Config,
    tls: Tls,
    client: Client,
    statements: HashMap<String, Statement>,
    in_transaction: bool,
}

impl Connection {
    fn serve(mut self, commands: mpsc::Receiver<Cmd>) {
        // Ends when the store (the only sender) is dropped; dropping the client closes the session.
        for cmd in commands {
            // A reply whose caller is gone is dropped: there is no one left to tell.
            match cmd {
                Cmd::Begin { sql, reply } => {
                    let _ = reply.send(self.begin(&sql));
                }
                Cmd::End { commit, reply } => {
                    let _ = reply.send(self.end(commit));
                }
                Cmd::Batch { sql, reply } => {
                    let _ = reply.send(self.client.batch_execute(&sql).map_err(pg_err));
                }
                Cmd::Execute { sql, params, reply } => {
                    let _ = reply.send(self.execute(&sql, &params));
                }
                Cmd::Query { sql, params, reply } => {
                    let _ = reply.send(self.query(&sql, &params));
                }
            }
        }
    }

    fn reconnect(&mut self) -> Result<()> {
        self.client = self.tls.connect(&self.config).map_err(pg_err)?;
        self.statements.clear();
        self.in_transaction = false;
        Ok(())
    }

    fn begin(&mut self, sql: &str) -> Result<()> {
        if self.client.is_closed() {
            self.reconnect()?;
        }
        if self.in_transaction {
            // Left open by a caller that panicked: nothing of it may commit.
            match self.client.batch_execute("ROLLBACK") {
                Ok(()) => self.in_transaction = false,
                Err(e) if session_lost(&e) => self.reconnect()?,
                Err(e) => return Err(pg_err(e)),
            }
        }
        match self.client.batch_execute(sql) {
            Ok(()) => {}
            // The server ended the session while the connection sat idle (a restart, a failover,
            // an idle timeout): nothing of this transaction has run, so it starts afresh.
            Err(e) if session_lost(&e) || self.client.is_closed() => {
                self.reconnect()?;
                self.client.batch_execute(sql).map_err(pg_err)?;
            }
            Err(e) => return Err(pg_err(e)),
        }
        self.in_transaction = true;
        Ok(())
    }

    fn end(&mut self, commit: bool) -> Result<()> {
        self.in_transaction = false;
        self.client.batch_execute(if commit { "COMMIT" } else { "ROLLBACK" }).map_err(pg_err)
    }

    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        let st = self.client.prepare(sql).map_err(pg_err)?;
        self.statements.insert(sql.to_owned(), st.clone());
        Ok(st)
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<usize> {
        let st = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let n = self.client.execute(&st, &refs).map_err(pg_err)?;
        usize::try_from(n).map_err(|_| Error::Database(DbError::Postgres("row count overflows".into())))
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let st = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let rows = self.client.query(&st, &refs).map_err(pg_err)?;
        rows.iter().map(row_values).collect()
    }
}

fn row_values(row: &postgres::Row) -> Result<Row> {
    let column = |index: usize, reason: String| Error::Database(DbError::Column { index, reason });
    let mut values = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let get_err = |e: postgres::Error| column(i, e.to_string());
        let ty = col.type_();
        let v = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i).map_err(get_err)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i).map_err(get_err)?.map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(i).map_err(get_err)?.map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i).map_err(get_err)?.map(|v| Value::Int(v.into()))
        } else if *ty == Type::FLOAT8 {
            row.try_get::<_, Option<f64>>(i).map_err(get_err)?.map(Value::Real)
        } else if *ty == Type::FLOAT4 {
            row.try_get::<_, Option<f32>>(i).map_err(get_err)?.map(|v| Value::Real(v.into()))
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(i).map_err(get_err)?.map(Value::Blob)
        } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(ty) {
            row.try_get::<_, Option<String>>(i).map_err(get_err)?.map(Value::Text)
        } else {
            return Err(column(i, format!("unsupported column type {ty}")));
        };
        values.push(v.unwrap_or(Value::Null));
    }
    Ok(Row::new(values))
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let mismatch = || format!("a {} value cannot bind to a {ty} parameter", self.type_name()).into();
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => {
                if *ty == Type::INT8 {
                    i.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(*i)?.to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (*i != 0).to_sql(ty, out)
                } else if *ty == Type::FLOAT8 {
                    (*i as f64).to_sql(ty, out)
                } else {
                    Err(mismatch())
                }
            }
            Value::Real(r) => {
                if *ty == Type::FLOAT8 {
                    r.to_sql(ty, out)
                } else if *ty == Type::FLOAT4 {
                    (*r as f32).to_sql(ty, out)
                } else {
                    Err(mismatch())
                }
            }
            Value::Text(s) => {
                if <&str as ToSql>::accepts(ty) {
                    s.as_str().to_sql(ty, out)
                } else {
                    Err(mismatch())
                }
            }
            Value::Blob(b) => {
                if *ty == Type::BYTEA {
                    b.as_slice().to_sql(ty, out)
                } else {
                    Err(mismatch())
                }
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value in `to_sql`, where the value's own kind is known.
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslrootcert_is_taken_out_of_the_url() {
        assert_eq!(split_root_cert("postgres://h/db"), ("postgres://h/db".into(), None));
        assert_eq!(
            split_root_cert("postgres://h/db?sslmode=require&sslrootcert=%2Fetc%2Fca.pem&application_name=x"),
            ("postgres://h/db?sslmode=require&application_name=x".into(), Some("/etc/ca.pem".into()))
        );
        assert_eq!(
            split_root_cert("postgres://h/db?sslrootcert=/ca.pem"),
            ("postgres://h/db".into(), Some("/ca.pem".into()))
        );
    }

    #[test]
    fn require_without_a_ca_is_refused() {
        let config: postgres::Config = "postgres://u@h/db?sslmode=require".parse().expect("config");
        assert!(matches!(Tls::for_config(&config, None), Err(Error::InvalidArgument(_))));
        assert!(matches!(Tls::for_config(&config, Some("/nonexistent/ca.pem")), Err(Error::InvalidArgument(_))));
        let plain: postgres::Config = "postgres://u@h/db".parse().expect("config");
        assert!(matches!(Tls::for_config(&plain, None), Ok(Tls::None)));
    }
}
