//! Storage: the metadata store (SQLite, or PostgreSQL for several nodes) and the blob stores.

pub mod blob;
pub mod meta;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod routed;
pub mod sql;

pub use blob::{BlobKey, BlobStore, BlobWrite, LocalBlobStore};
#[cfg(feature = "object-store")]
pub use blob::{DedicatedPrefixes, ObjectBlobStore};
pub use meta::MetaStore;
pub use routed::{DedicatedDirectories, StoreRouter};
pub use sql::{Db, DbError, FromValue, OptionalExt, Params, Row, ToValue, Value};
