//! Storage: the SQLite metadata store and the blob stores.

pub mod blob;
pub mod meta;
pub mod routed;

#[cfg(feature = "object-store")]
pub use blob::ObjectBlobStore;
pub use blob::{BlobKey, BlobStore, BlobWrite, LocalBlobStore};
pub use meta::MetaStore;
pub use routed::{DedicatedDirectories, StoreRouter};
