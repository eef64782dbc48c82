//! The store: suites and servers in a redb database, one transaction per
//! operation.
//!
//! Tables (keys are names, values JSON documents of [`Suite`] and
//! [`Server`]; JSON keeps records readable by tools and lets fields be
//! added with serde defaults):
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `"schema"` | the layout version, [`SCHEMA_VERSION`] |
//! | `suites` | suite name | [`Suite`] |
//! | `servers` | server name | [`Server`] |

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{ConcurrencyMode, Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;

use crate::export::ServerExport;
use crate::model::{ConfigData, Server, Suite};
use crate::validate::ValidationError;

/// Where the store is unless `RXL_STORE` or the caller says otherwise.
pub const DEFAULT_STORE_PATH: &str = "/var/lib/rxl/store.redb";
/// The environment variable that names the store file.
pub const STORE_ENV: &str = "RXL_STORE";
/// The version of the tables' layout this crate reads and writes.
pub const SCHEMA_VERSION: u64 = 1;

/// How long [`Store::open`] waits for another process that holds the
/// store in a way that excludes this one.
const OPEN_WAIT: Duration = Duration::from_secs(10);

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SUITES: TableDefinition<&str, &[u8]> = TableDefinition::new("suites");
const SERVERS: TableDefinition<&str, &[u8]> = TableDefinition::new("servers");

/// The store file: `$RXL_STORE` if set and not empty, else
/// [`DEFAULT_STORE_PATH`].
pub fn default_store_path() -> PathBuf {
    match std::env::var_os(STORE_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_STORE_PATH),
    }
}

/// The directory of a server's files (overlay, configuration disk,
/// `server.cfg`): `servers/NAME` beside the store file, so
/// `/var/lib/rxl/servers/NAME` for the default store.
pub fn server_dir(store_path: &Path, name: &str) -> PathBuf {
    store_path
        .parent()
        .unwrap_or(Path::new("/"))
        .join("servers")
        .join(name)
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's directory could not be created, or its file opened.
    #[error("cannot create the store {path}: {source}")]
    Create {
        /// The store file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another process kept the store open (with an older redb, or in an
    /// exclusive mode) for longer than the open waits.
    #[error("the store {0} is held open by another process; try again when it has finished")]
    Busy(PathBuf),
    /// The database failed.
    #[error("the store {path} failed: {source}")]
    Database {
        /// The store file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: Box<redb::Error>,
    },
    /// The store was written by a newer rxl.
    #[error(
        "the store {path} has layout version {found}; this rxl reads version {SCHEMA_VERSION} only"
    )]
    Schema {
        /// The store file.
        path: PathBuf,
        /// The layout version found.
        found: u64,
    },
    /// A record could not be decoded.
    #[error("the store {path} holds a broken record for {key:?}: {source}")]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// The record's key.
        key: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A value is invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// `add_suite` for a name in use.
    #[error("suite {0} already exists")]
    SuiteExists(String),
    /// No suite has the name.
    #[error("there is no suite {0}")]
    NoSuchSuite(String),
    /// `remove_suite` for a suite servers use.
    #[error("suite {suite} is used by server(s) {}; remove them first", .servers.join(", "))]
    SuiteInUse {
        /// The suite.
        suite: String,
        /// The servers that use it.
        servers: Vec<String>,
    },
    /// `add_server` for a name in use.
    #[error("server {0} already exists")]
    ServerExists(String),
    /// No server has the name.
    #[error("there is no server {0}")]
    NoSuchServer(String),
    /// An import names another suite than the server it replaces uses.
    #[error("server {server} runs suite {has}, but the import is for suite {import}; remove the server first to change its suite")]
    SuiteMismatch {
        /// The server.
        server: String,
        /// Its suite.
        has: String,
        /// The suite in the import.
        import: String,
    },
    /// An export could not be read.
    #[error("cannot read the server configuration: {0}")]
    Import(#[source] serde_json::Error),
    /// An export of another format or version.
    #[error("the file is not an rxl server configuration of version {}: it says format {format:?} version {version}", crate::export::EXPORT_VERSION)]
    ImportFormat {
        /// Its `format`.
        format: String,
        /// Its `version`.
        version: u64,
    },
    /// A record could not be encoded.
    #[error("cannot encode {key:?}: {source}")]
    Encode {
        /// The record's key.
        key: String,
        /// The encoding error.
        #[source]
        source: serde_json::Error,
    },
}

/// What [`Store::import_server`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    /// The server did not exist and was added.
    Created,
    /// The server existed; its configuration data was replaced.
    Replaced,
}

/// The store of suites and servers.
///
/// Several processes may have the store open at once (redb's multi-writer
/// mode, with byte-range locks); each operation is one transaction, and
/// write transactions are serialized.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store at `path`, creating it (and its directory, mode
    /// 0700; the file, mode 0600: configuration data may hold secrets) if
    /// it does not exist.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let create_err = |source| StoreError::Create {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(create_err)?;
        }
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => log::info!("created the store {}", path.display()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(create_err(e)),
        }
        let started = Instant::now();
        let db = loop {
            match Database::builder()
                .set_concurrency_mode(ConcurrencyMode::MultiWriter)
                .create(path)
            {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if started.elapsed() < OPEN_WAIT => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(StoreError::Busy(path.to_owned()))
                }
                Err(e) => {
                    return Err(StoreError::Database {
                        path: path.to_owned(),
                        source: Box::new(e.into()),
                    })
                }
            }
        };
        let store = Store {
            db,
            path: path.to_owned(),
        };
        store.init()?;
        Ok(store)
    }

    /// Opens the store at [`default_store_path`].
    pub fn open_default() -> Result<Store, StoreError> {
        Store::open(&default_store_path())
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the tables of a new store, or checks the layout version of
    /// an existing one.
    fn init(&self) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("schema")?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema", SCHEMA_VERSION)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(found) => {
                    return Err(StoreError::Schema {
                        path: self.path.clone(),
                        found,
                    }
                    .into())
                }
            }
            txn.open_table(SUITES)?;
            txn.open_table(SERVERS)?;
            Ok(())
        })
    }

    /// Adds a suite; fails if one has its name.
    pub fn add_suite(&self, suite: &Suite) -> Result<(), StoreError> {
        suite.validate()?;
        let value = encode(&suite.name, suite)?;
        self.write(|txn| {
            let mut suites = txn.open_table(SUITES)?;
            if suites.get(suite.name.as_str())?.is_some() {
                return Err(StoreError::SuiteExists(suite.name.clone()).into());
            }
            suites.insert(suite.name.as_str(), value.as_slice())?;
            Ok(())
        })
    }

    /// The suite called `name`.
    pub fn suite(&self, name: &str) -> Result<Suite, StoreError> {
        self.get(SUITES, name)?
            .ok_or_else(|| StoreError::NoSuchSuite(name.to_owned()))
    }

    /// Every suite, by name.
    pub fn list_suites(&self) -> Result<Vec<Suite>, StoreError> {
        self.list(SUITES)
    }

    /// Removes a suite, and returns it; fails if a server uses it.
    pub fn remove_suite(&self, name: &str) -> Result<Suite, StoreError> {
        self.write(|txn| {
            let servers = txn.open_table(SERVERS)?;
            let mut users = Vec::new();
            for entry in servers.iter()? {
                let (key, value) = entry?;
                let server: Server = self.decode(key.value(), value.value())?;
                if server.suite == name {
                    users.push(server.name);
                }
            }
            if !users.is_empty() {
                return Err(StoreError::SuiteInUse {
                    suite: name.to_owned(),
                    servers: users,
                }
                .into());
            }
            let mut suites = txn.open_table(SUITES)?;
            let removed = suites.remove(name)?;
            match removed {
                Some(value) => Ok(self.decode(name, value.value())?),
                None => Err(StoreError::NoSuchSuite(name.to_owned()).into()),
            }
        })
    }

    /// Adds a server; fails if one has its name or its suite does not
    /// exist.
    pub fn add_server(&self, server: &Server) -> Result<(), StoreError> {
        self.put_server(server, false)
    }

    /// Replaces a server's suite reference and configuration data (its
    /// creation time is kept); fails if it does not exist or its suite
    /// does not.
    pub fn update_server(&self, server: &Server) -> Result<(), StoreError> {
        self.put_server(server, true)
    }

    fn put_server(&self, server: &Server, replace: bool) -> Result<(), StoreError> {
        server.validate()?;
        self.write(|txn| {
            let suites = txn.open_table(SUITES)?;
            if suites.get(server.suite.as_str())?.is_none() {
                return Err(StoreError::NoSuchSuite(server.suite.clone()).into());
            }
            let mut servers = txn.open_table(SERVERS)?;
            let old: Option<Server> = match servers.get(server.name.as_str())? {
                Some(value) => Some(self.decode(&server.name, value.value())?),
                None => None,
            };
            let record = match (old, replace) {
                (Some(_), false) => {
                    return Err(StoreError::ServerExists(server.name.clone()).into())
                }
                (None, true) => return Err(StoreError::NoSuchServer(server.name.clone()).into()),
                (Some(old), true) => Server {
                    created_at: old.created_at,
                    ..server.clone()
                },
                (None, false) => server.clone(),
            };
            let value = encode(&record.name, &record)?;
            servers.insert(record.name.as_str(), value.as_slice())?;
            Ok(())
        })
    }

    /// The server called `name`.
    pub fn server(&self, name: &str) -> Result<Server, StoreError> {
        self.get(SERVERS, name)?
            .ok_or_else(|| StoreError::NoSuchServer(name.to_owned()))
    }

    /// Every server, by name.
    pub fn list_servers(&self) -> Result<Vec<Server>, StoreError> {
        self.list(SERVERS)
    }

    /// Removes a server, and returns it.
    pub fn remove_server(&self, name: &str) -> Result<Server, StoreError> {
        self.write(|txn| {
            let mut servers = txn.open_table(SERVERS)?;
            let removed = servers.remove(name)?;
            match removed {
                Some(value) => Ok(self.decode(name, value.value())?),
                None => Err(StoreError::NoSuchServer(name.to_owned()).into()),
            }
        })
    }

    /// Replaces the configuration data of server `name`.
    pub fn set_server_config(&self, name: &str, config: ConfigData) -> Result<(), StoreError> {
        let server = Server {
            config,
            ..self.server(name)?
        };
        self.update_server(&server)
    }

    /// A server's suite and configuration data as an export document
    /// (pretty JSON, files in base64, ending in a newline).
    pub fn export_server(&self, name: &str) -> Result<String, StoreError> {
        let server = self.server(name)?;
        ServerExport::from_server(&server)
            .to_json()
            .map_err(|source| StoreError::Encode {
                key: name.to_owned(),
                source,
            })
    }

    /// Reads an export document and adds its server, or replaces the
    /// configuration data of the server of that name (which must run the
    /// same suite; its creation time is kept). A new server's suite must
    /// exist. Returns the server's name and what was done.
    pub fn import_server(&self, json: &str) -> Result<(String, ImportOutcome), StoreError> {
        let ServerExport {
            name,
            suite,
            config,
            ..
        } = ServerExport::from_json(json)?;
        let server = Server::new(&name, &suite, config);
        server.validate()?;
        let outcome = self.write(|txn| {
            let mut servers = txn.open_table(SERVERS)?;
            let old: Option<Server> = match servers.get(name.as_str())? {
                Some(value) => Some(self.decode(&name, value.value())?),
                None => None,
            };
            let (record, outcome) = match old {
                Some(old) if old.suite != suite => {
                    let mismatch = StoreError::SuiteMismatch {
                        server: name.clone(),
                        has: old.suite,
                        import: suite.clone(),
                    };
                    return Err(mismatch.into());
                }
                Some(old) => (
                    Server {
                        config: server.config.clone(),
                        ..old
                    },
                    ImportOutcome::Replaced,
                ),
                None => {
                    let suites = txn.open_table(SUITES)?;
                    if suites.get(suite.as_str())?.is_none() {
                        return Err(StoreError::NoSuchSuite(suite.clone()).into());
                    }
                    (server.clone(), ImportOutcome::Created)
                }
            };
            let value = encode(&name, &record)?;
            servers.insert(name.as_str(), value.as_slice())?;
            Ok(outcome)
        })?;
        Ok((name, outcome))
    }

    /// Runs `f` in a write transaction and commits it if `f` succeeds;
    /// otherwise nothing `f` did is written.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, Failure>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_error(e))?;
        match f(&txn) {
            Ok(value) => {
                txn.commit().map_err(|e| self.db_error(e))?;
                Ok(value)
            }
            Err(failure) => {
                if let Err(e) = txn.abort() {
                    log::warn!("aborting a transaction of {}: {e}", self.path.display());
                }
                Err(match failure {
                    Failure::Db(e) => self.db_error(e),
                    Failure::Store(e) => e,
                })
            }
        }
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_error(e))?;
        let table = txn.open_table(table).map_err(|e| self.db_error(e))?;
        let value = table.get(key).map_err(|e| self.db_error(e))?;
        value.map(|v| self.decode(key, v.value())).transpose()
    }

    fn list<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_error(e))?;
        let table = txn.open_table(table).map_err(|e| self.db_error(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.db_error(e))? {
            let (key, value) = entry.map_err(|e| self.db_error(e))?;
            out.push(self.decode(key.value(), value.value())?);
        }
        Ok(out)
    }

    fn db_error(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Database {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
            path: self.path.clone(),
            key: key.to_owned(),
            source,
        })
    }
}

/// Why a write transaction's body failed: the database, or the operation.
enum Failure {
    Db(redb::Error),
    Store(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl From<redb::StorageError> for Failure {
    fn from(e: redb::StorageError) -> Self {
        Failure::Db(e.into())
    }
}

impl From<redb::TableError> for Failure {
    fn from(e: redb::TableError) -> Self {
        Failure::Db(e.into())
    }
}

fn encode<T: serde::Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        key: key.to_owned(),
        source,
    })
}
