//! Suites and servers: `suite-add`, `suite-list`, `suite-remove`,
//! `server-add`, `server-list`, `server-remove`, `server-export`,
//! `server-import` and `server-start` (rxl's own; xl has no such
//! commands).
//!
//! The suites and servers live in the store ([`rxl_store::Store`]) at
//! `--store FILE`, else `$RXL_STORE`, else `/var/lib/rxl/store.redb`.
//! Each server's files live in `servers/NAME/` beside the store file:
//!
//! | file | what |
//! |---|---|
//! | `root.qcow2` | its root disk, a qcow2 overlay over the suite image, made at the first start |
//! | `config.img` | its configuration disk, written afresh at every start |
//! | `server.cfg` | the `xl.cfg` it was last started from, for admins to read |
//!
//! Only `server-start` (to create the domain) and `server-remove` (to
//! refuse removing a running server) use the [`Host`]; the rest is
//! dom0-local files.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use clap::Args;
use rxl_store::overlay::{backing_of, detect_format, image_size};
use rxl_store::{
    create_overlay, default_store_path, format_utc, server_dir, unix_now, validate,
    write_config_disk, ConfigData, ConfigDiskError, ImageFormat, ImportOutcome, OverlayError,
    Server, Store, StoreError, Suite, ValidationError,
};
use serde_json::{json, Value};

use super::{CommandError, Streams};
use crate::host::{CreateOutcome, CreateRequest, DomId, Host, HostError};

/// The bridge every server's network interface is attached to.
pub const SERVER_BRIDGE: &str = "xenbr0";
/// The root disk's name in a server's directory.
pub const ROOT_DISK: &str = "root.qcow2";
/// The configuration disk's name in a server's directory.
pub const CONFIG_DISK: &str = "config.img";
/// The configuration file's name in a server's directory.
pub const SERVER_CFG: &str = "server.cfg";

/// Why a suite or server command failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreCommandError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A value is invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The root image or an overlay could not be read or made.
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    /// The configuration disk could not be written.
    #[error(transparent)]
    ConfigDisk(#[from] ConfigDiskError),
    /// A suite's kernel, ramdisk or image is missing or not a file.
    #[error("the {what} {path} cannot be used: {why}")]
    SuiteFile {
        /// `"kernel"`, `"ramdisk"` or `"image"`.
        what: &'static str,
        /// The path as given.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A file to read (`--file`, `server-import`) could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file to write (an export, `server.cfg`, a server's directory)
    /// could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A server's name is no hostname and no `--hostname` was given.
    #[error("server name {0:?} is not a valid hostname; give one with --hostname")]
    NoHostname(String),
    /// The server's domain exists.
    #[error("server {name} is running as domain {domid}; destroy or shut it down first")]
    Running {
        /// The server.
        name: String,
        /// Its domain.
        domid: DomId,
    },
    /// Looking up the server's domain failed.
    #[error("cannot tell whether server {name} is running: {source}")]
    DomainLookup {
        /// The server.
        name: String,
        /// Why.
        #[source]
        source: HostError,
    },
    /// The server's overlay is backed by another image than its suite's.
    #[error(
        "the root disk {overlay} is backed by {backing}, not by suite {suite}'s image {image}; \
         move the root disk away to start the server afresh from its suite"
    )]
    StaleOverlay {
        /// The overlay.
        overlay: PathBuf,
        /// Its backing file, or `(none)`.
        backing: String,
        /// The suite.
        suite: String,
        /// The suite's image.
        image: PathBuf,
    },
}

impl From<StoreCommandError> for CommandError {
    fn from(e: StoreCommandError) -> Self {
        CommandError::Store(Box::new(e))
    }
}

/// `--store FILE`: which store a command uses.
#[derive(Debug, Clone, Args)]
pub struct StoreArg {
    /// The store (default: $RXL_STORE, else /var/lib/rxl/store.redb).
    #[arg(long = "store", value_name = "FILE")]
    pub store: Option<PathBuf>,
}

impl StoreArg {
    /// The store file.
    pub fn path(&self) -> PathBuf {
        self.store.clone().unwrap_or_else(default_store_path)
    }

    fn open(&self) -> Result<Store, StoreCommandError> {
        Ok(Store::open(&self.path())?)
    }
}

/// `suite-add NAME --kernel K [--ramdisk R] --image IMG [options]`.
#[derive(Debug, Args)]
pub struct SuiteAddArgs {
    /// The suite's name.
    pub name: String,
    /// The guest kernel.
    #[arg(long, value_name = "FILE")]
    pub kernel: PathBuf,
    /// The initial ramdisk.
    #[arg(long, value_name = "FILE")]
    pub ramdisk: Option<PathBuf>,
    /// The read-only root image the servers' overlays are backed by.
    #[arg(long, value_name = "FILE")]
    pub image: PathBuf,
    /// The image's format (default: detected).
    #[arg(long, value_name = "raw|qcow2")]
    pub format: Option<ImageFormat>,
    /// The base kernel command line.
    #[arg(
        long,
        value_name = "CMDLINE",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub cmdline: String,
    /// Each server's memory, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = rxl_store::model::DEFAULT_MEMORY_MIB)]
    pub memory: u64,
    /// Each server's vCPUs.
    #[arg(long, value_name = "N", default_value_t = rxl_store::model::DEFAULT_VCPUS)]
    pub vcpus: u32,
    /// The store.
    #[command(flatten)]
    pub store: StoreArg,
}

/// `suite-list [--json]` and `server-list [--json]`.
#[derive(Debug, Args)]
pub struct StoreListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The store.
    #[command(flatten)]
    pub store: StoreArg,
}

/// `suite-remove NAME`, `server-remove NAME`.
#[derive(Debug, Args)]
pub struct StoreNameArgs {
    /// The suite's or server's name.
    pub name: String,
    /// The store.
    #[command(flatten)]
    pub store: StoreArg,
}

/// `server-add NAME --suite S [options]`.
#[derive(Debug, Args)]
pub struct ServerAddArgs {
    /// The server's name, also its domain's.
    pub name: String,
    /// The suite it runs.
    #[arg(long, value_name = "SUITE")]
    pub suite: String,
    /// Its hostname (default: its name).
    #[arg(long, value_name = "HOSTNAME")]
    pub hostname: Option<String>,
    /// An address of an interface (repeatable, in order).
    #[arg(long = "address", value_name = "IFACE=CIDR", value_parser = parse_pair)]
    pub addresses: Vec<(String, String)>,
    /// The default gateway.
    #[arg(long, value_name = "IP")]
    pub gateway: Option<String>,
    /// A tuning parameter (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub params: Vec<(String, String)>,
    /// A file to install in the guest, read now from LOCALFILE
    /// (repeatable).
    #[arg(long = "file", value_name = "GUESTPATH=LOCALFILE", value_parser = parse_pair)]
    pub files: Vec<(String, String)>,
    /// The store.
    #[command(flatten)]
    pub store: StoreArg,
}

/// `server-export NAME [FILE]`.
#[derive(Debug, Args)]
pub struct ServerExportArgs {
    /// The server.
    pub name: String,
    /// Where to write the JSON document (default: standard output).
    pub file: Option<PathBuf>,
    /// The store.
    #[command(flatten)]
    pub store: StoreArg,
}

/// `server-import FILE`.
#[derive(Debug, Args)]
pub struct ServerImportArgs {
    /// A document `server-export` wrote.
    pub file: PathBuf,
    /// The store.
    #[command(flatten)]
    pub store: StoreArg,
}

/// `server-start NAME [-p]`.
#[derive(Debug, Args)]
pub struct ServerStartArgs {
    /// The server.
    pub name: String,
    /// Leave the domain paused after it is created.
    #[arg(short = 'p')]
    pub paused: bool,
    /// The store.
    #[command(flatten)]
    pub store: StoreArg,
}

/// `KEY=VALUE`, split at the first `=`; the key is not empty.
fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, not {s:?}")),
    }
}

/// `suite-add`: checks the files, records their absolute paths.
pub(super) fn suite_add(args: &SuiteAddArgs) -> Result<(), CommandError> {
    let kernel = usable_file("kernel", &args.kernel, false)?;
    let ramdisk = args
        .ramdisk
        .as_deref()
        .map(|r| usable_file("ramdisk", r, false))
        .transpose()?;
    let image = usable_file("image", &args.image, true)?;
    let detected = detect_format(&image).map_err(StoreCommandError::from)?;
    let image_format = args.format.unwrap_or(detected);
    if image_format != detected {
        log::warn!(
            "{} looks like {detected}, but is added as {image_format} as asked",
            image.display()
        );
    }
    // Opening it checks that it is an image of that format (and, for
    // qcow2, that its own backing chain is there).
    image_size(&image, image_format).map_err(StoreCommandError::from)?;
    let suite = Suite {
        name: args.name.clone(),
        kernel,
        ramdisk,
        image,
        image_format,
        cmdline: args.cmdline.clone(),
        memory_mib: args.memory,
        vcpus: args.vcpus,
        added_at: unix_now(),
    };
    args.store
        .open()?
        .add_suite(&suite)
        .map_err(StoreCommandError::from)?;
    Ok(())
}

/// The absolute path of an existing regular file (or, for images, block
/// device).
fn usable_file(
    what: &'static str,
    path: &Path,
    device_ok: bool,
) -> Result<PathBuf, StoreCommandError> {
    let fail = |why: String| StoreCommandError::SuiteFile {
        what,
        path: path.to_owned(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    let kind = meta.file_type();
    if !(kind.is_file() || device_ok && kind.is_block_device()) {
        return Err(fail(
            if device_ok {
                "it is not a file or block device"
            } else {
                "it is not a file"
            }
            .into(),
        ));
    }
    let absolute = std::path::absolute(path).map_err(|e| fail(e.to_string()))?;
    validate::host_path(what, &absolute)?;
    Ok(absolute)
}

/// `suite-list`.
pub(super) fn suite_list(args: &StoreListArgs, io: &mut Streams<'_>) -> Result<(), CommandError> {
    let store = args.store.open()?;
    let suites = store.list_suites().map_err(StoreCommandError::from)?;
    let servers = store.list_servers().map_err(StoreCommandError::from)?;
    let users = |suite: &str| servers.iter().filter(|s| s.suite == suite).count();
    if args.json {
        let list: Vec<Value> = suites
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
                v["servers"] = json!(users(&s.name));
                v
            })
            .collect();
        write_json(io, &Value::Array(list))?;
        return Ok(());
    }
    let width = suites
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0)
        .max(20);
    writeln!(
        io.out,
        "{:<width$} Format    Mem VCPUs Servers Added (UTC)          Image",
        "Name"
    )?;
    for s in &suites {
        writeln!(
            io.out,
            "{:<width$} {:<6} {:>6} {:>5} {:>7} {}  {}",
            s.name,
            s.image_format,
            s.memory_mib,
            s.vcpus,
            users(&s.name),
            format_utc(s.added_at),
            s.image.display()
        )?;
    }
    Ok(())
}

/// Pretty JSON and a newline.
fn write_json(io: &mut Streams<'_>, value: &Value) -> Result<(), CommandError> {
    serde_json::to_writer_pretty(&mut *io.out, value).map_err(io::Error::from)?;
    writeln!(io.out)?;
    Ok(())
}

/// `suite-remove`.
pub(super) fn suite_remove(args: &StoreNameArgs) -> Result<(), CommandError> {
    args.store
        .open()?
        .remove_suite(&args.name)
        .map_err(StoreCommandError::from)?;
    Ok(())
}

/// `server-add`: the configuration data from the flags and files.
pub(super) fn server_add(args: &ServerAddArgs) -> Result<(), CommandError> {
    let hostname = match &args.hostname {
        Some(h) => h.clone(),
        None if validate::hostname(&args.name).is_ok() => args.name.clone(),
        None => return Err(StoreCommandError::NoHostname(args.name.clone()).into()),
    };
    let mut files = std::collections::BTreeMap::new();
    for (guest, local) in &args.files {
        let local = PathBuf::from(local);
        let contents = std::fs::read(&local).map_err(|source| StoreCommandError::Read {
            path: local.clone(),
            source,
        })?;
        files.insert(guest.clone(), contents);
    }
    let config = ConfigData {
        hostname,
        addresses: args.addresses.clone(),
        gateway: args.gateway.clone(),
        params: args.params.iter().cloned().collect(),
        files,
    };
    let server = Server::new(&args.name, &args.suite, config);
    args.store
        .open()?
        .add_server(&server)
        .map_err(StoreCommandError::from)?;
    Ok(())
}

/// `server-list`.
pub(super) fn server_list(args: &StoreListArgs, io: &mut Streams<'_>) -> Result<(), CommandError> {
    let servers = args
        .store
        .open()?
        .list_servers()
        .map_err(StoreCommandError::from)?;
    if args.json {
        let list: Vec<Value> = servers
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "suite": s.suite,
                    "hostname": s.config.hostname,
                    "addresses": s.config.addresses,
                    "gateway": s.config.gateway,
                    "params": s.config.params,
                    "files": s.config.files.keys().collect::<Vec<_>>(),
                    "created_at": s.created_at,
                })
            })
            .collect();
        write_json(io, &Value::Array(list))?;
        return Ok(());
    }
    let width = servers
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(0)
        .max(20);
    let suite_width = servers
        .iter()
        .map(|s| s.suite.len())
        .max()
        .unwrap_or(0)
        .max(12);
    let host_width = servers
        .iter()
        .map(|s| s.config.hostname.len())
        .max()
        .unwrap_or(0)
        .max(16);
    writeln!(
        io.out,
        "{:<width$} {:<suite_width$} {:<host_width$} Created (UTC)        Addresses",
        "Name", "Suite", "Hostname"
    )?;
    for s in &servers {
        let mut addresses = String::new();
        for (i, (iface, cidr)) in s.config.addresses.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(addresses, "{sep}{iface}={cidr}");
        }
        if addresses.is_empty() {
            addresses.push('-');
        }
        writeln!(
            io.out,
            "{:<width$} {:<suite_width$} {:<host_width$} {}  {addresses}",
            s.name,
            s.suite,
            s.config.hostname,
            format_utc(s.created_at)
        )?;
    }
    Ok(())
}

/// `server-remove`: refuses while the server's domain exists; removes its
/// record and then its files (root disk, configuration disk, `server.cfg`).
pub(super) fn server_remove(args: &StoreNameArgs, host: &mut dyn Host) -> Result<(), CommandError> {
    refuse_running(&args.name, host)?;
    let store_path = args.store.path();
    args.store
        .open()?
        .remove_server(&args.name)
        .map_err(StoreCommandError::from)?;
    let dir = server_dir(&store_path, &args.name);
    for name in [
        ROOT_DISK,
        CONFIG_DISK,
        SERVER_CFG,
        "config.img.new",
        "server.cfg.new",
    ] {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => log::info!("removed {}", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot remove {}: {e}", path.display()),
        }
    }
    match std::fs::remove_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("leaving {} in place: {e}", dir.display()),
    }
    Ok(())
}

fn refuse_running(name: &str, host: &dyn Host) -> Result<(), StoreCommandError> {
    match host.domain_by_name(name) {
        Ok(None) => Ok(()),
        Ok(Some(domid)) => Err(StoreCommandError::Running {
            name: name.to_owned(),
            domid,
        }),
        Err(source) => Err(StoreCommandError::DomainLookup {
            name: name.to_owned(),
            source,
        }),
    }
}

/// `server-export`: to standard output, or to FILE (mode 0600: the data
/// may hold secrets).
pub(super) fn server_export(
    args: &ServerExportArgs,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    let json = args
        .store
        .open()?
        .export_server(&args.name)
        .map_err(StoreCommandError::from)?;
    match &args.file {
        None => io.out.write_all(json.as_bytes())?,
        Some(path) => write_private(path, json.as_bytes())?,
    }
    Ok(())
}

/// `server-import`.
pub(super) fn server_import(args: &ServerImportArgs) -> Result<(), CommandError> {
    let json = std::fs::read_to_string(&args.file).map_err(|source| StoreCommandError::Read {
        path: args.file.clone(),
        source,
    })?;
    let (name, outcome) = args
        .store
        .open()?
        .import_server(&json)
        .map_err(StoreCommandError::from)?;
    match outcome {
        ImportOutcome::Created => log::info!("added server {name}"),
        ImportOutcome::Replaced => log::info!("replaced the configuration data of server {name}"),
    }
    Ok(())
}

/// Writes `contents` to `path` (mode 0600), through a file beside it
/// renamed over it, so readers see the old file or the new one.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), StoreCommandError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|source| {
        // Best effort: the half-written file is of no use.
        let _ = std::fs::remove_file(&tmp);
        StoreCommandError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

/// `server-start`: makes the root disk if missing, writes the
/// configuration disk and `server.cfg`, and creates the domain from
/// `server.cfg` as `create` does.
pub(super) fn server_start(
    args: &ServerStartArgs,
    host: &mut dyn Host,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    let store_path = args.store.path();
    // The store is closed again before the domain is built.
    let (server, suite) = {
        let store = args.store.open()?;
        let server = store.server(&args.name).map_err(StoreCommandError::from)?;
        let suite = store
            .suite(&server.suite)
            .map_err(StoreCommandError::from)?;
        (server, suite)
    };
    refuse_running(&server.name, host)?;
    let config_file = compose(&store_path, &server, &suite)?;

    writeln!(io.err, "Parsing config from {}", config_file.display())?;
    let request = CreateRequest {
        config_file,
        paused: args.paused,
        daemonize: true,
        monitor: true,
        ..CreateRequest::default()
    };
    match host.create(&request).map_err(CommandError::Create)? {
        CreateOutcome::Created(domid) => {
            log::info!("started server {} as domain {domid}", server.name)
        }
        CreateOutcome::DryRun(config) => write_json(io, &config)?,
    }
    Ok(())
}

/// Lays out the server's directory for a start: its root disk (made if
/// missing, checked against the suite if not), a fresh configuration disk
/// and `server.cfg`. Returns the path of `server.cfg`.
fn compose(
    store_path: &Path,
    server: &Server,
    suite: &Suite,
) -> Result<PathBuf, StoreCommandError> {
    let dir = server_dir(store_path, &server.name);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| StoreCommandError::Write {
            path: dir.clone(),
            source,
        })?;
    let root = dir.join(ROOT_DISK);
    if root.exists() {
        let backing = backing_of(&root)?;
        if backing.as_deref() != Some(suite.image.as_path()) {
            return Err(StoreCommandError::StaleOverlay {
                overlay: root,
                backing: backing.map_or_else(|| "(none)".to_owned(), |b| b.display().to_string()),
                suite: suite.name.clone(),
                image: suite.image.clone(),
            });
        }
    } else {
        create_overlay(&root, &suite.image, suite.image_format, None)?;
    }
    let config_disk = dir.join(CONFIG_DISK);
    write_config_disk(&config_disk, &server.config, unix_now())?;
    let cfg = dir.join(SERVER_CFG);
    write_private(
        &cfg,
        server_cfg(server, suite, &root, &config_disk).as_bytes(),
    )?;
    Ok(cfg)
}

/// The MAC address of a server's network interface: Xen's OUI
/// `00:16:3e`, then the three low-order bytes of the 64-bit FNV-1a hash of
/// its name, so that a server keeps its MAC across starts and hosts.
pub fn server_mac(name: &str) -> [u8; 6] {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = name.bytes().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    });
    let [.., a, b, c] = hash.to_be_bytes();
    [0x00, 0x16, 0x3e, a, b, c]
}

/// `'text'` in `xl.cfg` syntax: backslashes and quotes escaped. (Suite
/// paths and command lines have no control characters.)
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        if matches!(c, '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The `xl.cfg` of a server: its suite's kernel, ramdisk, command line
/// (with ` rxl_server=NAME`), memory and vCPUs; the root disk as `xvda`
/// (read-write), the configuration disk as `xvdc` (read-only); one
/// network interface on [`SERVER_BRIDGE`] with [`server_mac`].
fn server_cfg(server: &Server, suite: &Suite, root: &Path, config_disk: &Path) -> String {
    let cmdline = format!("{} rxl_server={}", suite.cmdline, server.name);
    let [a, b, c, d, e, f] = server_mac(&server.name);
    let mac = format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}");
    let disk = |format: &str, vdev: &str, access: &str, target: &Path| {
        quote(&format!(
            "format={format},vdev={vdev},access={access},target={}",
            target.display()
        ))
    };
    let mut cfg = format!(
        "# Server {} of suite {}, written by `rxl server-start` at every start.\n",
        server.name, suite.name
    );
    let mut line = |key: &str, value: String| {
        let _ = writeln!(cfg, "{key} = {value}");
    };
    line("name", quote(&server.name));
    line("type", quote("pv"));
    line("kernel", quote(&suite.kernel.display().to_string()));
    if let Some(ramdisk) = &suite.ramdisk {
        line("ramdisk", quote(&ramdisk.display().to_string()));
    }
    line("cmdline", quote(cmdline.trim_start()));
    line("memory", suite.memory_mib.to_string());
    line("vcpus", suite.vcpus.to_string());
    line(
        "disk",
        format!(
            "[ {}, {} ]",
            disk("qcow2", "xvda", "rw", root),
            disk("raw", "xvdc", "ro", config_disk)
        ),
    );
    line(
        "vif",
        format!(
            "[ {} ]",
            quote(&format!("mac={mac},bridge={SERVER_BRIDGE}"))
        ),
    );
    cfg
}

#[cfg(test)]
mod tests {
    use std::process::Command as Process;

    use clap::Parser;

    use super::*;
    use crate::commands::{run, Cli, Command};
    use crate::config::disk::Access;
    use crate::config::{DomainConfig, DomainType, Source};
    use crate::host::fake::FakeHost;

    /// A temporary dom0: a store, a kernel, a ramdisk and a 1 MiB raw
    /// root image.
    struct Dom0 {
        dir: tempfile::TempDir,
        host: FakeHost,
    }

    impl Dom0 {
        fn new() -> Dom0 {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("vmlinuz"), b"kernel").unwrap();
            std::fs::write(dir.path().join("initrd"), b"ramdisk").unwrap();
            std::fs::write(dir.path().join("root.img"), vec![0u8; 1 << 20]).unwrap();
            Dom0 {
                dir,
                host: FakeHost::new(),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn store(&self) -> PathBuf {
            self.path("lib/store.redb")
        }

        /// Runs `rxl ARGS --store STORE`: exit code, stdout, stderr.
        fn rxl(&mut self, args: &[&str]) -> (u8, String, String) {
            let store = self.store();
            let argv = std::iter::once("rxl")
                .chain(args.iter().copied())
                .chain(["--store", store.to_str().unwrap()]);
            let cli = Cli::try_parse_from(argv).unwrap();
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = run(&cli, &mut self.host, &mut out, &mut err);
            (
                code,
                String::from_utf8(out).unwrap(),
                String::from_utf8(err).unwrap(),
            )
        }

        fn ok(&mut self, args: &[&str]) -> String {
            let (code, out, err) = self.rxl(args);
            assert_eq!(code, 0, "rxl {args:?}: {err}");
            out
        }

        fn add_suite(&mut self) {
            let (kernel, initrd, image) = (
                self.path("vmlinuz"),
                self.path("initrd"),
                self.path("root.img"),
            );
            self.ok(&[
                "suite-add",
                "debian12",
                "--kernel",
                kernel.to_str().unwrap(),
                "--ramdisk",
                initrd.to_str().unwrap(),
                "--image",
                image.to_str().unwrap(),
                "--cmdline",
                "console=hvc0 root=/dev/xvda",
                "--memory",
                "256",
                "--vcpus",
                "2",
            ]);
        }
    }

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("rxl").chain(args.iter().copied()))
            .unwrap()
            .command
    }

    #[test]
    fn commands_parse_with_xl_style_names_and_repeatable_flags() {
        let add = parse(&[
            "server-add",
            "web1",
            "--suite",
            "debian12",
            "--address",
            "eth0=192.0.2.10/24",
            "--address",
            "eth1=10.0.0.2/8",
            "--param",
            "workers=4",
            "--param",
            "motd=a=b",
            "--file",
            "/etc/motd=./motd",
        ]);
        let start = parse(&["server-start", "web1", "-p", "--store", "/tmp/s.redb"]);
        let suite = parse(&[
            "suite-add",
            "s",
            "--kernel",
            "k",
            "--image",
            "i",
            "--format",
            "qcow2",
        ]);
        let bad_pair = Cli::try_parse_from([
            "rxl",
            "server-add",
            "w",
            "--suite",
            "s",
            "--param",
            "novalue",
        ]);
        let bad_format = Cli::try_parse_from([
            "rxl",
            "suite-add",
            "s",
            "--kernel",
            "k",
            "--image",
            "i",
            "--format",
            "vhd",
        ]);

        let Command::ServerAdd(add) = add else {
            panic!("{add:?}")
        };
        assert_eq!(
            add.addresses,
            [
                ("eth0".into(), "192.0.2.10/24".into()),
                ("eth1".into(), "10.0.0.2/8".into())
            ]
        );
        assert_eq!(
            add.params,
            [
                ("workers".into(), "4".into()),
                ("motd".into(), "a=b".into())
            ]
        );
        assert_eq!(add.files, [("/etc/motd".into(), "./motd".into())]);
        assert_eq!(add.store.store, None);
        let Command::ServerStart(start) = start else {
            panic!("{start:?}")
        };
        assert!(start.paused);
        assert_eq!(start.store.path(), Path::new("/tmp/s.redb"));
        let Command::SuiteAdd(suite) = suite else {
            panic!("{suite:?}")
        };
        assert_eq!(
            (suite.format, suite.memory, suite.vcpus),
            (Some(ImageFormat::Qcow2), 512, 1)
        );
        assert_eq!(bad_pair.unwrap_err().exit_code(), 2);
        assert_eq!(bad_format.unwrap_err().exit_code(), 2);
    }

    #[test]
    fn macs_are_xen_macs_derived_from_the_name() {
        let web1 = server_mac("web1");

        assert_eq!(web1[..3], [0x00, 0x16, 0x3e]);
        assert_eq!(web1, server_mac("web1"));
        assert_ne!(web1, server_mac("web2"));
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(server_mac("a"), [0x00, 0x16, 0x3e, 0x01, 0xec, 0x8c]);
    }

    #[test]
    fn the_composed_configuration_is_the_xl_cfg_of_the_server() {
        let suite = Suite {
            name: "debian12".into(),
            kernel: "/srv/it's/vmlinuz".into(),
            ramdisk: Some("/srv/initrd".into()),
            image: "/srv/root.img".into(),
            image_format: ImageFormat::Raw,
            cmdline: "console=hvc0 root=/dev/xvda".into(),
            memory_mib: 384,
            vcpus: 3,
            added_at: 0,
        };
        let server = Server::new("web1", "debian12", ConfigData::with_hostname("web1"));
        let root = Path::new("/var/lib/rxl/servers/web1/root.qcow2");
        let config = Path::new("/var/lib/rxl/servers/web1/config.img");

        let text = server_cfg(&server, &suite, root, config);

        let [.., d, e, f] = server_mac("web1");
        let mac = format!("00:16:3e:{d:02x}:{e:02x}:{f:02x}");
        assert_eq!(
            text,
            format!(
                "# Server web1 of suite debian12, written by `rxl server-start` at every start.\n\
                 name = 'web1'\n\
                 type = 'pv'\n\
                 kernel = '/srv/it\\'s/vmlinuz'\n\
                 ramdisk = '/srv/initrd'\n\
                 cmdline = 'console=hvc0 root=/dev/xvda rxl_server=web1'\n\
                 memory = 384\n\
                 vcpus = 3\n\
                 disk = [ 'format=qcow2,vdev=xvda,access=rw,target=/var/lib/rxl/servers/web1/root.qcow2', \
                 'format=raw,vdev=xvdc,access=ro,target=/var/lib/rxl/servers/web1/config.img' ]\n\
                 vif = [ 'mac={mac},bridge=xenbr0' ]\n"
            )
        );
        let parsed =
            DomainConfig::parse(Source::file("server.cfg"), &text, &[] as &[&str]).unwrap();
        assert_eq!(parsed.name, "web1");
        assert_eq!(parsed.domain_type, DomainType::Pv);
        assert_eq!(parsed.kernel.as_deref(), Some("/srv/it's/vmlinuz"));
        assert_eq!(parsed.ramdisk.as_deref(), Some("/srv/initrd"));
        assert_eq!(
            parsed.cmdline.as_deref(),
            Some("console=hvc0 root=/dev/xvda rxl_server=web1")
        );
        assert_eq!((parsed.memory_mib, parsed.vcpus), (384, 3));
        assert_eq!(parsed.disks.len(), 2);
        assert_eq!(
            parsed.disks[0].target.as_deref(),
            Some(root.to_str().unwrap())
        );
        assert_eq!(parsed.disks[0].format.to_string(), "qcow2");
        assert_eq!(
            (parsed.disks[0].vdev.devid, parsed.disks[1].vdev.devid),
            (51712, 51744)
        );
        assert_eq!(
            parsed.disks[1].target.as_deref(),
            Some(config.to_str().unwrap())
        );
        assert_eq!(parsed.disks[1].format.to_string(), "raw");
        assert_eq!(
            (parsed.disks[0].access, parsed.disks[1].access),
            (Access::ReadWrite, Access::ReadOnly)
        );
        assert_eq!(parsed.vifs.len(), 1);
        assert_eq!(parsed.vifs[0].mac.map(|m| m.0), Some(server_mac("web1")));
        assert_eq!(parsed.vifs[0].bridge.as_deref(), Some("xenbr0"));
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
        assert!(parsed.ignored_settings().is_empty());
    }

    #[test]
    fn suites_are_added_listed_and_removed() {
        let mut dom0 = Dom0::new();
        dom0.add_suite();
        let image = dom0.path("root.img");

        let table = dom0.ok(&["suite-list"]);
        let json: Value = serde_json::from_str(&dom0.ok(&["suite-list", "--json"])).unwrap();
        let (dup, _, dup_err) = dom0.rxl(&[
            "suite-add",
            "debian12",
            "--kernel",
            "/nonexistent",
            "--image",
            "/x",
        ]);
        dom0.ok(&["suite-remove", "debian12"]);
        let empty = dom0.ok(&["suite-list"]);

        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 2, "{table}");
        assert!(
            lines[0].starts_with("Name                 Format    Mem VCPUs Servers Added (UTC)"),
            "{table}"
        );
        let row: Vec<_> = lines[1].split_whitespace().collect();
        assert_eq!(row[..5], ["debian12", "raw", "256", "2", "0"], "{table}");
        assert_eq!(row[7], image.to_str().unwrap());
        assert_eq!(json[0]["kernel"], dom0.path("vmlinuz").to_str().unwrap());
        assert_eq!(json[0]["image_format"], "raw");
        assert_eq!(json[0]["servers"], 0);
        assert_eq!(dup, 1);
        assert!(
            dup_err.starts_with("the kernel /nonexistent cannot be used"),
            "{dup_err}"
        );
        assert_eq!(empty.lines().count(), 1);
    }

    #[test]
    fn suite_paths_are_recorded_absolute() {
        let mut dom0 = Dom0::new();
        let cwd = std::env::current_dir().unwrap();
        let relative = |p: PathBuf| pathdiff(&p, &cwd);
        let (kernel, image) = (
            relative(dom0.path("vmlinuz")),
            relative(dom0.path("root.img")),
        );

        dom0.ok(&[
            "suite-add",
            "s",
            "--kernel",
            kernel.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
        ]);

        let suite = Store::open(&dom0.store()).unwrap().suite("s").unwrap();
        assert!(
            suite.kernel.is_absolute() && suite.image.is_absolute(),
            "{suite:?}"
        );
        assert_eq!(std::fs::read(&suite.kernel).unwrap(), b"kernel");
        assert_eq!(
            (suite.image_format, suite.memory_mib, suite.vcpus),
            (ImageFormat::Raw, 512, 1)
        );
    }

    /// `path` relative to `base` (both absolute), with `..` steps.
    fn pathdiff(path: &Path, base: &Path) -> PathBuf {
        let (p, b): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
        let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
        let mut out = PathBuf::new();
        for _ in common..b.len() {
            out.push("..");
        }
        for c in &p[common..] {
            out.push(c);
        }
        out
    }

    #[test]
    fn servers_are_added_listed_exported_imported_and_removed() {
        let mut dom0 = Dom0::new();
        dom0.add_suite();
        let motd = dom0.path("motd");
        std::fs::write(&motd, b"welcome\n").unwrap();
        let file_arg = format!("/etc/motd={}", motd.display());
        let export = dom0.path("web1.json");

        dom0.ok(&[
            "server-add",
            "web1",
            "--suite",
            "debian12",
            "--address",
            "eth0=192.0.2.10/24",
            "--gateway",
            "192.0.2.1",
            "--param",
            "workers=4",
            "--file",
            &file_arg,
        ]);
        dom0.ok(&[
            "server-add",
            "db_1",
            "--suite",
            "debian12",
            "--hostname",
            "db1",
        ]);
        let (no_host, _, no_host_err) = dom0.rxl(&["server-add", "db_2", "--suite", "debian12"]);
        let (bad, _, bad_err) = dom0.rxl(&[
            "server-add",
            "x",
            "--suite",
            "debian12",
            "--address",
            "eth0=10.0.0.1",
        ]);
        let table = dom0.ok(&["server-list"]);
        let stdout_export = dom0.ok(&["server-export", "web1"]);
        dom0.ok(&["server-export", "web1", export.to_str().unwrap()]);
        dom0.ok(&["server-remove", "web1"]);
        let (in_use, _, in_use_err) = dom0.rxl(&["suite-remove", "debian12"]);
        dom0.ok(&["server-import", export.to_str().unwrap()]);
        let reexport = dom0.ok(&["server-export", "web1"]);

        assert_eq!(no_host, 1);
        assert_eq!(
            no_host_err,
            "server name \"db_2\" is not a valid hostname; give one with --hostname\n"
        );
        assert_eq!(bad, 1);
        assert!(
            bad_err.starts_with("invalid address \"10.0.0.1\": it has no /PREFIX"),
            "{bad_err}"
        );
        let lines: Vec<Vec<_>> = table
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert_eq!(lines[1][..3], ["db_1", "debian12", "db1"], "{table}");
        assert_eq!(lines[1][5], "-", "{table}");
        assert_eq!(lines[2][..3], ["web1", "debian12", "web1"], "{table}");
        assert_eq!(lines[2][5], "eth0=192.0.2.10/24", "{table}");
        assert_eq!(std::fs::read_to_string(&export).unwrap(), stdout_export);
        assert!(
            stdout_export.contains("\"/etc/motd\": \"d2VsY29tZQo=\""),
            "{stdout_export}"
        );
        assert_eq!(in_use, 1);
        assert_eq!(
            in_use_err,
            "suite debian12 is used by server(s) db_1; remove them first\n"
        );
        assert_eq!(reexport, stdout_export);
    }

    #[test]
    fn server_start_composes_the_disks_and_creates_the_domain_from_server_cfg() {
        let mut dom0 = Dom0::new();
        dom0.add_suite();
        dom0.ok(&[
            "server-add",
            "web1",
            "--suite",
            "debian12",
            "--address",
            "eth0=192.0.2.10/24",
        ]);
        let dir = dom0.path("lib/servers/web1");

        let (code, _, err) = dom0.rxl(&["server-start", "web1", "-p"]);

        assert_eq!(code, 0, "{err}");
        let cfg = dir.join("server.cfg");
        assert_eq!(err, format!("Parsing config from {}\n", cfg.display()));
        assert_eq!(dom0.host.calls, [format!("create {}", cfg.display())]);
        let text = std::fs::read_to_string(&cfg).unwrap();
        let parsed = DomainConfig::parse(Source::file(&cfg), &text, &[] as &[&str]).unwrap();
        assert_eq!(parsed.kernel.as_deref(), dom0.path("vmlinuz").to_str());
        assert_eq!(
            parsed.cmdline.as_deref(),
            Some("console=hvc0 root=/dev/xvda rxl_server=web1")
        );
        assert_eq!((parsed.memory_mib, parsed.vcpus), (256, 2));
        assert_eq!(
            parsed.disks[0].target.as_deref(),
            dir.join("root.qcow2").to_str()
        );
        assert_eq!(
            parsed.disks[1].target.as_deref(),
            dir.join("config.img").to_str()
        );
        assert_eq!(
            backing_of(&dir.join("root.qcow2")).unwrap(),
            Some(dom0.path("root.img"))
        );
        let guest = dom0.path("guest");
        std::fs::create_dir(&guest).unwrap();
        let tar = Process::new("tar")
            .arg("-xf")
            .arg(dir.join("config.img"))
            .arg("-C")
            .arg(&guest)
            .status()
            .unwrap();
        assert!(tar.success());
        assert_eq!(
            std::fs::read_to_string(guest.join("rxl/hostname")).unwrap(),
            "web1\n"
        );
        assert_eq!(
            std::fs::read_to_string(guest.join("rxl/addresses")).unwrap(),
            "eth0 192.0.2.10/24\n"
        );
    }

    #[test]
    fn a_second_start_keeps_the_root_disk_and_rewrites_the_configuration_disk() {
        let mut dom0 = Dom0::new();
        dom0.add_suite();
        dom0.ok(&["server-add", "web1", "--suite", "debian12"]);
        dom0.ok(&["server-start", "web1"]);
        let dir = dom0.path("lib/servers/web1");
        let root_inode = || {
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(dir.join("root.qcow2")).unwrap())
        };
        let before = root_inode();
        let new_config = dom0.path("new.json");
        let doc = dom0
            .ok(&["server-export", "web1"])
            .replace("\"hostname\": \"web1\"", "\"hostname\": \"www\"");
        std::fs::write(&new_config, doc).unwrap();
        dom0.ok(&["server-import", new_config.to_str().unwrap()]);
        dom0.host.domains.retain(|&id, _| id == 0);

        dom0.ok(&["server-start", "web1"]);

        assert_eq!(root_inode(), before, "the root disk is kept");
        let listing = Process::new("tar")
            .arg("-xOf")
            .arg(dir.join("config.img"))
            .arg("rxl/hostname")
            .output()
            .unwrap();
        assert_eq!(listing.stdout, b"www\n");
    }

    #[test]
    fn a_running_server_is_neither_started_again_nor_removed() {
        let mut dom0 = Dom0::new();
        dom0.add_suite();
        dom0.ok(&["server-add", "web1", "--suite", "debian12"]);
        dom0.host.add_domain(3, "web1", 256, 2);

        let (start, _, start_err) = dom0.rxl(&["server-start", "web1"]);
        let (remove, _, remove_err) = dom0.rxl(&["server-remove", "web1"]);

        assert_eq!((start, remove), (1, 1));
        assert_eq!(
            start_err,
            "server web1 is running as domain 3; destroy or shut it down first\n"
        );
        assert_eq!(remove_err, start_err);
        assert!(dom0.host.calls.is_empty());
        assert!(!dom0.path("lib/servers/web1").exists());
    }

    #[test]
    fn server_remove_removes_the_servers_files() {
        let mut dom0 = Dom0::new();
        dom0.add_suite();
        dom0.ok(&["server-add", "web1", "--suite", "debian12"]);
        dom0.ok(&["server-start", "web1"]);
        dom0.host.domains.retain(|&id, _| id == 0);

        dom0.ok(&["server-remove", "web1"]);

        assert!(!dom0.path("lib/servers/web1").exists());
        assert!(dom0.path("lib/servers").exists());
    }

    #[test]
    fn a_root_disk_over_another_image_is_not_used() {
        let mut dom0 = Dom0::new();
        dom0.add_suite();
        dom0.ok(&["server-add", "web1", "--suite", "debian12"]);
        let dir = dom0.path("lib/servers/web1");
        std::fs::create_dir_all(&dir).unwrap();
        let other = dom0.path("other.img");
        std::fs::write(&other, vec![0u8; 1 << 20]).unwrap();
        create_overlay(&dir.join("root.qcow2"), &other, ImageFormat::Raw, None).unwrap();

        let (code, _, err) = dom0.rxl(&["server-start", "web1"]);

        assert_eq!(code, 1);
        assert!(
            err.starts_with(&format!(
                "the root disk {} is backed by {}",
                dir.join("root.qcow2").display(),
                other.display()
            )),
            "{err}"
        );
        assert!(dom0.host.calls.is_empty());
    }
}
