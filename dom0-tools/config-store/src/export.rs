//! The export document of a server's configuration data.
//!
//! ```json
//! {
//!   "format": "rxl-server-config",
//!   "version": 1,
//!   "name": "web1",
//!   "suite": "debian12",
//!   "config": {
//!     "hostname": "web1",
//!     "addresses": [["eth0", "192.0.2.10/24"]],
//!     "gateway": "192.0.2.1",
//!     "params": {"workers": "4"},
//!     "files": {"/etc/motd": "aGVsbG8K"}
//!   }
//! }
//! ```
//!
//! File contents are standard base64. Unknown fields are refused, so a
//! misspelt key is an error rather than silently lost. Export, import and
//! export again give the same bytes.

use serde::{Deserialize, Serialize};

use crate::model::{ConfigData, Server};
use crate::store::StoreError;

/// The `format` of an export document.
pub const EXPORT_FORMAT: &str = "rxl-server-config";
/// The `version` of the export documents this crate writes and reads.
pub const EXPORT_VERSION: u64 = 1;

/// A server's configuration data with what names it: the server and its
/// suite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerExport {
    /// [`EXPORT_FORMAT`].
    pub format: String,
    /// [`EXPORT_VERSION`].
    pub version: u64,
    /// The server.
    pub name: String,
    /// Its suite.
    pub suite: String,
    /// Its configuration data.
    pub config: ConfigData,
}

impl ServerExport {
    /// The export of `server`.
    pub fn from_server(server: &Server) -> ServerExport {
        ServerExport {
            format: EXPORT_FORMAT.to_owned(),
            version: EXPORT_VERSION,
            name: server.name.clone(),
            suite: server.suite.clone(),
            config: server.config.clone(),
        }
    }

    /// The document: pretty-printed JSON ending in a newline.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        Ok(text)
    }

    /// Reads a document, checking its format and version (not the
    /// values: [`Server::validate`] does).
    pub fn from_json(json: &str) -> Result<ServerExport, StoreError> {
        #[derive(Deserialize)]
        struct Head {
            format: Option<String>,
            version: Option<u64>,
        }
        // The format is checked first, so that a document of another kind
        // or version is reported as such and not as a missing field.
        let head: Head = serde_json::from_str(json).map_err(StoreError::Import)?;
        if head.format.as_deref() != Some(EXPORT_FORMAT) || head.version != Some(EXPORT_VERSION) {
            return Err(StoreError::ImportFormat {
                format: head.format.unwrap_or_default(),
                version: head.version.unwrap_or(0),
            });
        }
        serde_json::from_str(json).map_err(StoreError::Import)
    }
}
