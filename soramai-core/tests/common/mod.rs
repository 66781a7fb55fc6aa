//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use soramai_core::{Config, Core, Database, LocalRootKey, ManualClock, Principal, TenantId, Tier};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub core: Arc<Core>,
    pub clock: Arc<ManualClock>,
    pub root: Arc<LocalRootKey>,
    /// The metadata database every open of this environment uses: SQLite in the data directory,
    /// or, when `SORAMAI_TEST_CORE_ON_POSTGRES=1` and `SORAMAI_TEST_POSTGRES` names a server, a
    /// fresh PostgreSQL database of its own.
    pub database: Database,
    pg: Option<PgDatabase>,
}

pub const T0: i64 = 1_800_000_000_000;

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Arc::new(LocalRootKey::generate());
        let clock = Arc::new(ManualClock::new(T0));
        let pg = PgDatabase::create();
        let database = pg.as_ref().map_or(Database::Sqlite, |pg| Database::Postgres(pg.url().to_owned()));
        let core = Arc::new(Self::open_on(dir.path(), &database, root.clone(), clock.clone()));
        Self { dir, core, clock, root, database, pg }
    }

    fn open_on(dir: &Path, database: &Database, root: Arc<LocalRootKey>, clock: Arc<ManualClock>) -> Core {
        let mut config = Config::new(dir.join("data"), root);
        config.database = database.clone();
        config.clock = clock;
        Core::open(config).expect("open core")
    }

    /// A config on this environment's data directory and database, with another root key.
    pub fn config_with_root(&self, root: Arc<LocalRootKey>) -> Config {
        let mut config = Config::new(self.data_dir(), root);
        config.database = self.database.clone();
        config
    }

    pub fn reopen(&self) -> Core {
        Self::open_on(self.dir.path(), &self.database, self.root.clone(), self.clock.clone())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn tenant(&self, name: &str, tier: Tier) -> (TenantId, Principal) {
        let id = TenantId::new(name).expect("id");
        self.core.create_tenant(&id, tier).expect("create tenant");
        let p = Principal::operator(&id);
        (id, p)
    }

    /// Runs SQL on the metadata database behind the core's back (to tamper with it).
    pub fn raw_sql(&self, sql: &str) {
        match &self.pg {
            None => rusqlite::Connection::open(self.data_dir().join("meta.sqlite3"))
                .expect("db")
                .execute_batch(sql)
                .expect("sql"),
            Some(pg) => pg.batch(sql),
        }
    }

    /// Every (tenant, version, wrapped key) row still holding a wrapped key.
    pub fn wrapped_keys(&self) -> Vec<(String, u32, Vec<u8>)> {
        const SQL: &str = "SELECT tenant_id, version, wrapped FROM tenant_keys WHERE wrapped IS NOT NULL";
        match &self.pg {
            None => {
                let db = rusqlite::Connection::open(self.data_dir().join("meta.sqlite3")).expect("db");
                let mut st = db.prepare(SQL).expect("prepare");
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .expect("query")
                    .collect::<Result<_, _>>()
                    .expect("rows")
            }
            Some(pg) => pg.wrapped_keys(SQL),
        }
    }

    /// The files that hold the metadata tables: the SQLite database (and its WAL), or the
    /// PostgreSQL database's own directory in the server's data directory.
    pub fn metadata_files(&self) -> Vec<PathBuf> {
        match &self.pg {
            None => files_under(&self.data_dir())
                .into_iter()
                .filter(|f| f.to_string_lossy().contains("meta.sqlite3"))
                .collect(),
            Some(pg) => pg.table_files(),
        }
    }

    /// Ends every server session on this environment's PostgreSQL database (as a server restart
    /// or failover would); `false` on SQLite.
    pub fn drop_database_connections(&self) -> bool {
        match &self.pg {
            None => false,
            Some(pg) => {
                pg.batch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                );
                true
            }
        }
    }

    /// With PostgreSQL: how many sessions of `application_name` are open on this environment's
    /// database, and how many of them run over TLS.
    pub fn database_sessions(&self, application_name: &str) -> Option<(i64, i64)> {
        self.pg.as_ref().map(|pg| pg.sessions(application_name))
    }

    /// Every file the platform's data can reach: the data directory, and with PostgreSQL the
    /// database's files and the server's write-ahead log.
    pub fn stored_files(&self) -> Vec<PathBuf> {
        let mut files = files_under(&self.data_dir());
        if let Some(pg) = &self.pg {
            files.extend(pg.table_files());
            files.extend(pg.wal_files());
        }
        files
    }
}

/// A database of its own on the PostgreSQL server named by `SORAMAI_TEST_POSTGRES` (an admin
/// connection string), dropped with the environment, when `SORAMAI_TEST_CORE_ON_POSTGRES=1`. The
/// server's data directory, for the tests that look at files, is `SORAMAI_TEST_POSTGRES_DATA`.
#[cfg(feature = "postgres")]
struct PgDatabase {
    db: test_database::TestDatabase,
    data_dir: PathBuf,
}

#[cfg(feature = "postgres")]
#[path = "test_database.rs"]
mod test_database;

#[cfg(feature = "postgres")]
impl PgDatabase {
    fn create() -> Option<Self> {
        if std::env::var("SORAMAI_TEST_CORE_ON_POSTGRES").as_deref() != Ok("1") {
            return None;
        }
        let admin = std::env::var("SORAMAI_TEST_POSTGRES").expect("SORAMAI_TEST_POSTGRES: the test server");
        let data_dir = PathBuf::from(
            std::env::var("SORAMAI_TEST_POSTGRES_DATA")
                .expect("SORAMAI_TEST_POSTGRES_DATA: the server's data directory"),
        );
        Some(Self { db: test_database::TestDatabase::create(&admin), data_dir })
    }

    fn url(&self) -> &str {
        &self.db.url
    }

    fn batch(&self, sql: &str) {
        self.db.client().batch_execute(sql).expect("sql");
    }

    fn wrapped_keys(&self, sql: &str) -> Vec<(String, u32, Vec<u8>)> {
        self.db
            .client()
            .query(sql, &[])
            .expect("query")
            .iter()
            .map(|r| (r.get(0), u32::try_from(r.get::<_, i64>(1)).expect("version"), r.get(2)))
            .collect()
    }

    fn sessions(&self, application_name: &str) -> (i64, i64) {
        let row = self
            .db
            .client()
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                 WHERE a.datname = current_database() AND a.application_name = $1",
                &[&application_name],
            )
            .expect("sessions");
        (row.get(0), row.get(1))
    }

    fn table_files(&self) -> Vec<PathBuf> {
        self.db.table_files(&self.data_dir)
    }

    fn wal_files(&self) -> Vec<PathBuf> {
        test_database::TestDatabase::wal_files(&self.data_dir)
    }
}

/// Without the `postgres` feature there is no PostgreSQL database: a type with no values.
#[cfg(not(feature = "postgres"))]
enum PgDatabase {}

#[cfg(not(feature = "postgres"))]
impl PgDatabase {
    fn create() -> Option<Self> {
        assert!(
            std::env::var("SORAMAI_TEST_CORE_ON_POSTGRES").as_deref() != Ok("1"),
            "SORAMAI_TEST_CORE_ON_POSTGRES is set: run the tests with `--features postgres`"
        );
        None
    }

    fn url(&self) -> &str {
        match *self {}
    }

    fn batch(&self, _: &str) {
        match *self {}
    }

    fn wrapped_keys(&self, _: &str) -> Vec<(String, u32, Vec<u8>)> {
        match *self {}
    }

    fn sessions(&self, _: &str) -> (i64, i64) {
        match *self {}
    }

    fn table_files(&self) -> Vec<PathBuf> {
        match *self {}
    }

    fn wal_files(&self) -> Vec<PathBuf> {
        match *self {}
    }
}

pub fn chat_line(user: &str, assistant: &str) -> String {
    serde_json::json!({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})
        .to_string()
}

pub fn dataset(n: usize, tag: &str) -> Vec<u8> {
    (0..n)
        .map(|i| chat_line(&format!("question {i} {tag}"), &format!("answer {i} {tag}")) + "\n")
        .collect::<String>()
        .into_bytes()
}

#[path = "../../../soramai-kernels/tests/common/files.rs"]
mod files;
#[allow(unused_imports)] // not every test file scans files
pub use files::{contains, files_under};
