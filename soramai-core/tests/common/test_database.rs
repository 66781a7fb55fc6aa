//! A PostgreSQL database of its own for one test, on the server that `scripts/postgres.sh`
//! starts, dropped at the end. Shared by path by the core's and the server's tests (the including
//! module has `files` beside it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use super::files::files_under;

pub struct TestDatabase {
    admin: String,
    name: String,
    /// The connection string of the new database.
    pub url: String,
}

impl TestDatabase {
    /// Creates a fresh database through `admin` (a connection string with a database name).
    pub fn create(admin: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("soramai_test_{}_{nanos}_{n}", std::process::id());
        let mut client = postgres::Client::connect(admin, postgres::NoTls).expect("connect to the test server");
        client.batch_execute(&format!("CREATE DATABASE {name}")).expect("create database");
        let url = format!("{}/{name}", admin.rsplit_once('/').expect("a database in the admin URL").0);
        Self { admin: admin.to_owned(), name, url }
    }

    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).expect("connect")
    }

    /// The database's own files under the server's data directory.
    pub fn table_files(&self, server_data: &Path) -> Vec<PathBuf> {
        let oid: u32 = self
            .client()
            .query_one("SELECT oid FROM pg_database WHERE datname = current_database()", &[])
            .expect("oid")
            .get(0);
        files_under(&server_data.join("base").join(oid.to_string()))
    }

    /// The server's write-ahead log (every database's).
    pub fn wal_files(server_data: &Path) -> Vec<PathBuf> {
        files_under(&server_data.join("pg_wal"))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}
