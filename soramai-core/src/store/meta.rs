//! The metadata store. Embedded default: SQLite in WAL mode with `synchronous=FULL`, `secure_delete` (a deleted
//! wrapped key leaves no copy in free pages) and numbered migrations.
//!
//! It holds ids, states, counters, hashes and wrapped keys, never customer content: datasets,
//! secrets and artifacts live encrypted in the blob store.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

use super::sql::{Db, Sqlite};
use crate::error::{Error, Result};

const MIGRATIONS: &[&str] = &[
    // 1: the initial schema
    r#"
    CREATE TABLE system_keys (
        name TEXT PRIMARY KEY,
        wrapped BLOB NOT NULL,
        root_fingerprint TEXT NOT NULL
    );
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        tier TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('active', 'deleted')),
        key_custody TEXT NOT NULL CHECK (key_custody IN ('operator', 'customer')),
        created_at INTEGER NOT NULL,
        deleted_at INTEGER
    );
    CREATE TABLE tenant_keys (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        version INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('primary', 'active', 'retired')),
        wrapped BLOB,
        root_fingerprint TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, version)
    );
    CREATE TABLE objects (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        path TEXT NOT NULL,
        blob TEXT NOT NULL,
        key_version INTEGER NOT NULL,
        plaintext_len INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, path)
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        secret_hash BLOB NOT NULL,
        scopes TEXT NOT NULL,
        pool TEXT,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        revoked_at INTEGER,
        replaced_by TEXT,
        last_used_at INTEGER
    );
    CREATE INDEX api_keys_tenant ON api_keys(tenant_id);
    CREATE TABLE datasets (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        examples INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX datasets_tenant ON datasets(tenant_id);
    CREATE TABLE secrets (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, name)
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        kind TEXT NOT NULL,
        spec TEXT NOT NULL,
        pool TEXT NOT NULL,
        state TEXT NOT NULL,
        progress REAL NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        lease_owner TEXT,
        lease_expires_at INTEGER,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        result TEXT,
        error TEXT,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER
    );
    CREATE INDEX jobs_claim ON jobs(state, pool, created_at);
    CREATE INDEX jobs_tenant ON jobs(tenant_id);
    CREATE TABLE job_events (
        job_id TEXT NOT NULL REFERENCES jobs(id),
        seq INTEGER NOT NULL,
        at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    );
    CREATE TABLE audit_log (
        tenant_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash BLOB NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (tenant_id, seq)
    );
    CREATE TABLE audit_heads (
        tenant_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        hash BLOB NOT NULL,
        tag BLOB NOT NULL
    );
    CREATE TABLE usage_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        model TEXT NOT NULL,
        adapter TEXT,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        status TEXT NOT NULL
    );
    CREATE INDEX usage_tenant_at ON usage_events(tenant_id, at);
    CREATE TABLE ledger (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        receipt TEXT NOT NULL UNIQUE,
        tenant_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('grant', 'usage', 'refund')),
        amount INTEGER NOT NULL,
        balance_after INTEGER NOT NULL,
        reference TEXT NOT NULL
    );
    CREATE INDEX ledger_tenant ON ledger(tenant_id, id);
    "#,
    // 2: the access log (who read which resource when; Org and Enterprise)
    r#"
    CREATE TABLE access_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        resource TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX access_log_tenant_at ON access_log(tenant_id, at);
    "#,
    // 3: key scopes (a key per path prefix, wrapped by the tenant key, shreddable on its own)
    r#"
    CREATE TABLE scope_keys (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        scope TEXT NOT NULL,
        wrapped BLOB NOT NULL,
        tenant_key_version INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, scope)
    );
    ALTER TABLE objects ADD COLUMN scope TEXT NOT NULL DEFAULT '';
    "#,
    // 4: blob placement per tenant (shared store or a dedicated one)
    r#"
    ALTER TABLE tenants ADD COLUMN store TEXT NOT NULL DEFAULT 'shared' CHECK (store IN ('shared', 'dedicated'));
    "#,
    // 5: opt-in to keeping query text in the access log (stored sealed, never in clear)
    r#"
    ALTER TABLE tenants ADD COLUMN log_query_text INTEGER NOT NULL DEFAULT 0;
    "#,
    // 6: base models, fine-tuned models, and fine-tuning checkpoints and charges per job
    r#"
    CREATE TABLE base_models (
        id TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        registered_at INTEGER NOT NULL
    );
    CREATE TABLE fine_tuned_models (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        base TEXT NOT NULL,
        job_id TEXT NOT NULL,
        trained_tokens INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX fine_tuned_models_tenant ON fine_tuned_models(tenant_id);
    ALTER TABLE jobs ADD COLUMN checkpoint_step INTEGER;
    ALTER TABLE jobs ADD COLUMN charged_tokens INTEGER NOT NULL DEFAULT 0;
    "#,
    // 7: break-glass access grants, and the grant a key belongs to
    r#"
    CREATE TABLE access_grants (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        operator_tenant TEXT NOT NULL,
        operator_key TEXT NOT NULL,
        key_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        scopes TEXT NOT NULL,
        ttl_seconds INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'active', 'revoked', 'expired')),
        requested_at INTEGER NOT NULL,
        approved_at INTEGER,
        expires_at INTEGER NOT NULL,
        ended_at INTEGER,
        ended_by TEXT
    );
    CREATE INDEX access_grants_tenant ON access_grants(tenant_id);
    CREATE INDEX access_grants_operator ON access_grants(operator_tenant);
    CREATE INDEX access_grants_due ON access_grants(status, expires_at);
    ALTER TABLE api_keys ADD COLUMN grant_id TEXT;
    "#,
    // 8: backup targets, and the deletions still to reach them
    r#"
    CREATE TABLE backup_targets (
        url TEXT PRIMARY KEY,
        added_at INTEGER NOT NULL
    );
    CREATE TABLE backup_pending (
        url TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('closed', 'scope')),
        at INTEGER NOT NULL,
        PRIMARY KEY (url, tenant_id, kind)
    );
    "#,
    // 9: account closures waiting for their purge
    r#"
    CREATE TABLE tenant_closures (
        tenant_id TEXT PRIMARY KEY REFERENCES tenants(id),
        requested_at INTEGER NOT NULL,
        purge_at INTEGER NOT NULL
    );
    "#,
    // 10: customers' own GGUF base models (Pro and up), sealed in the blob store
    r#"
    CREATE TABLE custom_models (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        architecture TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX custom_models_tenant ON custom_models(tenant_id);
    "#,
    // 11: people: users, their memberships and invitations, web sessions, sign-in failures,
    // password resets (tokens and passwords as hashes only; TOTP secrets wrapped by the root key)
    r#"
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        totp_wrapped BLOB,
        totp_enabled INTEGER NOT NULL DEFAULT 0,
        totp_last_step INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE members (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        user_id TEXT NOT NULL REFERENCES users(id),
        role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
        created_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, user_id)
    );
    CREATE INDEX members_user ON members(user_id);
    CREATE TABLE invitations (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        email TEXT NOT NULL,
        role TEXT NOT NULL,
        token_hash BLOB NOT NULL UNIQUE,
        invited_by TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        accepted_at INTEGER
    );
    CREATE INDEX invitations_tenant ON invitations(tenant_id);
    CREATE TABLE web_sessions (
        token_hash BLOB PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        created_at INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX web_sessions_user ON web_sessions(user_id);
    CREATE TABLE sign_in_failures (
        email_hash BLOB PRIMARY KEY,
        failures INTEGER NOT NULL,
        locked_until INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE password_resets (
        token_hash BLOB PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    "#,
    // 12: passkeys (WebAuthn public keys and counters; no secret) and the ceremonies under way
    r#"
    CREATE TABLE passkeys (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        credential_id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        passkey TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        last_used_at INTEGER
    );
    CREATE INDEX passkeys_user ON passkeys(user_id);
    CREATE TABLE webauthn_ceremonies (
        id_hash BLOB PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id),
        kind TEXT NOT NULL CHECK (kind IN ('register', 'sign_in')),
        state TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );
    "#,
    // 13: single sign-on: a tenant's OpenID Connect provider (its client secret is an object
    // sealed under the tenant key), the provider accounts linked to people, sign-ins under way
    r#"
    CREATE TABLE sso_configs (
        tenant_id TEXT PRIMARY KEY REFERENCES tenants(id),
        issuer TEXT NOT NULL,
        client_id TEXT NOT NULL,
        default_role TEXT,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE sso_links (
        issuer TEXT NOT NULL,
        subject TEXT NOT NULL,
        user_id TEXT NOT NULL REFERENCES users(id),
        created_at INTEGER NOT NULL,
        PRIMARY KEY (issuer, subject)
    );
    ALTER TABLE web_sessions ADD COLUMN tenant_id TEXT;
    CREATE TABLE sso_logins (
        state_hash BLOB PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        nonce TEXT NOT NULL,
        pkce_verifier TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );
    "#,
    // 14: a running job's commit under way (its result being stored): a cancel is refused from
    // then on, so an accepted cancel always ends the job cancelled
    r#"
    ALTER TABLE jobs ADD COLUMN committing INTEGER NOT NULL DEFAULT 0;
    "#,
];

/// The metadata database: SQLite in the data directory (the embedded default), or a PostgreSQL
/// shared by several nodes (the `postgres` feature).
#[derive(Debug)]
pub struct MetaStore {
    backend: Store,
}

#[derive(Debug)]
enum Store {
    Sqlite(Mutex<Connection>),
    #[cfg(feature = "postgres")]
    Postgres(super::postgres::PgStore),
}

impl MetaStore {
    /// Opens (creating if needed) the SQLite database at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory SQLite database, for tests.
    pub fn open_in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    /// Connects to PostgreSQL (`postgres://user:password@host:port/database`, or the key=value
    /// form) and applies pending migrations, under a lock that lets only one node migrate.
    #[cfg(feature = "postgres")]
    pub fn connect_postgres(url: &str) -> Result<Self> {
        Ok(Self { backend: Store::Postgres(super::postgres::PgStore::connect(url)?) })
    }

    /// Which backend this is: `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Store::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Store::Postgres(_) => "postgres",
        }
    }

    fn init(mut conn: Connection) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(Error::InvalidArgument(format!(
                "the metadata database is at schema version {version}, newer than this build's {known}"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Self { backend: Store::Sqlite(Mutex::new(conn)) })
    }

    /// Locks the SQLite connection (a poisoned lock is recovered: SQLite's own transactions keep
    /// the data consistent even if a thread panicked mid-way).
    fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
        conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in one write transaction, committed only if `f` succeeds. Writes are serialized:
    /// SQLite's immediate transaction, or a transaction-scoped advisory lock that every node of a
    /// PostgreSQL deployment takes (so counters, hash chains and leases stay consistent across
    /// nodes).
    pub(crate) fn write<T>(&self, f: impl FnOnce(&Db<'_>) -> Result<T>) -> Result<T> {
        match &self.backend {
            Store::Sqlite(conn) => {
                let mut conn = Self::lock(conn);
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let out = f(&Db::new(&Sqlite(&tx)))?;
                tx.commit()?;
                Ok(out)
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(pg) => pg.write(f),
        }
    }

    /// Writes a consistent copy of the database to `path` (SQLite's `VACUUM INTO`: compacted, no
    /// free pages). PostgreSQL has its own tools for that (`pg_dump`, base backups).
    pub(crate) fn snapshot_into(&self, path: &Path) -> Result<()> {
        match &self.backend {
            Store::Sqlite(conn) => {
                let conn = Self::lock(conn);
                conn.execute("VACUUM INTO ?1", [path.to_string_lossy()])?;
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                Ok(())
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(_) => Err(Error::InvalidArgument(
                "a PostgreSQL metadata store is backed up with PostgreSQL's own tools (pg_dump, base backups); \
                 `backup` covers the embedded default"
                    .into(),
            )),
        }
    }

    /// Runs a read-only closure on one consistent view of the data.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Db<'_>) -> Result<T>) -> Result<T> {
        match &self.backend {
            Store::Sqlite(conn) => {
                let conn = Self::lock(conn);
                f(&Db::new(&Sqlite(&conn)))
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(pg) => pg.read(f),
        }
    }

    /// After deletions of key material: SQLite checkpoints the WAL into the main file and
    /// truncates it (with `secure_delete`, no copy is left in the file); PostgreSQL rewrites the
    /// key tables (`VACUUM FULL`), so no dead row version keeps a deleted wrapped key.
    pub(crate) fn checkpoint(&self) -> Result<()> {
        match &self.backend {
            Store::Sqlite(conn) => {
                let conn = Self::lock(conn);
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
                Ok(())
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(pg) => pg.purge_key_tables(),
        }
    }
}
