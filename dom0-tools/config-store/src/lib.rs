//! `rxl-store`: rxl's suites and servers ("migratable computing").
//!
//! A *suite* is a tested, read-only kernel and root image (with an
//! optional ramdisk and a base kernel command line). A *server* is a suite
//! plus its *configuration data*: hostname, addresses, gateway, tuning
//! parameters and files. `rxl server-start` composes the two: a qcow2
//! overlay over the shared suite image ([`overlay`]) as the server's root
//! disk, and the configuration data on a small raw disk holding a tar
//! archive ([`configdisk`]).
//!
//! - [`Store`]: suites and servers in an embedded database, one
//!   transaction per operation, at [`DEFAULT_STORE_PATH`] unless
//!   `RXL_STORE` ([`default_store_path`]) or the caller says otherwise.
//! - [`model`]: [`Suite`], [`Server`], [`ConfigData`].
//! - [`validate`]: names, hostnames, addresses, guest paths.
//! - [`export`]: the JSON document `server-export` writes and
//!   `server-import` reads.
//!
//! # Why redb
//!
//! The store is dom0-local and small, written by short-lived `rxl`
//! processes that may run side by side (two `server-start`s at once).
//! [redb](https://docs.rs/redb) is a pure-Rust embedded key-value store,
//! actively maintained and widely used, with ACID transactions and crash
//! safety (copy-on-write B-trees, checksummed commits). Its multi-writer
//! mode (redb 4.3 and later) lets several processes have one database
//! open, serializing their write transactions with byte-range file locks,
//! so one rxl never fails because another is running. The alternatives
//! fit less well: sled's 1.0 has stayed in alpha for years and its stable
//! line is unmaintained; SQLite (rusqlite) is C and brings a query
//! language the store does not need; fjall's LSM tree is built for
//! write-heavy data far larger than this. Records are JSON (serde), so
//! they stay readable and fields can be added with serde defaults; the
//! store's layout has a version ([`SCHEMA_VERSION`]) checked at open.
//!
//! ```
//! use rxl_store::{ConfigData, ImageFormat, Server, Store, Suite};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(&dir.path().join("store.redb"))?;
//! let suite = Suite::new("debian12", "/srv/vmlinuz".into(), "/srv/root.img".into(), ImageFormat::Raw);
//! store.add_suite(&suite)?;
//! store.add_server(&Server::new("web1", "debian12", ConfigData::with_hostname("web1")))?;
//! assert_eq!(store.server("web1")?.config.hostname, "web1");
//! assert!(store.remove_suite("debian12").is_err(), "web1 uses it");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod configdisk;
pub mod export;
pub mod model;
pub mod overlay;
mod store;
pub mod validate;

pub use configdisk::{write_config_disk, ConfigDiskError};
pub use export::ServerExport;
pub use model::{format_utc, unix_now, ConfigData, ImageFormat, Server, Suite};
pub use overlay::{create_overlay, OverlayError};
pub use store::{
    default_store_path, server_dir, ImportOutcome, Store, StoreError, DEFAULT_STORE_PATH,
    SCHEMA_VERSION, STORE_ENV,
};
pub use validate::ValidationError;

#[cfg(test)]
mod tests;
