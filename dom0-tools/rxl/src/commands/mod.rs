//! xl's commands: their flags (clap), output and exit codes.
//!
//! Each command runs against a [`Host`] and writes to the two
//! [`Streams`] it is given, so tests compare its output byte for byte.
//! Output formats, messages and exit codes follow Xen 4.17's `tools/xl`;
//! each command's module names the xl source it matches.
//!
//! Exit codes: 0 on success, 1 (`EXIT_FAILURE`) on failure, 2 for usage
//! errors (from clap, as from xl's getopt handling), and for `create` the
//! negated libxl error code, as `xl create` returns.

use std::io::{self, Write};

use clap::{Args, Parser, Subcommand};

use crate::host::{self, DomId, Host, HostError};

mod block;
mod domain;
pub(crate) mod format;
mod info;
mod memory;
mod network;
mod store;
mod vcpu;

#[cfg(test)]
mod tests;

pub use block::{BlockAttachArgs, BlockDetachArgs, BlockListArgs};
pub use domain::{
    ConsoleArgs, CreateArgs, DestroyArgs, DomainArg, ListArgs, MonitorArgs, ShutdownArgs, UptimeArgs,
};
pub use info::{DmesgArgs, InfoArgs};
pub use memory::MemSetArgs;
pub use network::{NetworkAttachArgs, NetworkDetachArgs, NetworkListArgs};
pub use store::{
    ServerAddArgs, ServerExportArgs, ServerImportArgs, ServerStartArgs, StoreArg,
    StoreCommandError, StoreListArgs, StoreNameArgs, SuiteAddArgs,
};
pub use vcpu::{VcpuListArgs, VcpuSetArgs};

/// `rxl [global options] <subcommand> [args]`.
#[derive(Debug, Parser)]
#[command(
    name = "rxl",
    version,
    about = "An xl-compatible Xen toolstack.",
    subcommand_value_name = "SUBCOMMAND"
)]
pub struct Cli {
    /// Verbose: log more (repeat for even more).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Dry run: print what would be done without doing it (for commands
    /// that support it).
    #[arg(short = 'N')]
    pub dry_run: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// xl's subcommands, with xl's names and descriptions.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a domain from a config file.
    #[command(about = "Create a domain from config file <filename>")]
    Create(CreateArgs),
    /// List information about all/some domains.
    List(ListArgs),
    /// Terminate a domain immediately.
    Destroy(DestroyArgs),
    /// Issue a shutdown signal to a domain.
    Shutdown(ShutdownArgs),
    /// Issue a reboot signal to a domain.
    Reboot(ShutdownArgs),
    /// Pause execution of a domain.
    Pause(DomainArg),
    /// Unpause a paused domain.
    Unpause(DomainArg),
    /// Attach to domain's console.
    Console(ConsoleArgs),
    /// Set the current memory usage for a domain.
    MemSet(MemSetArgs),
    /// List the VCPUs for all/some domains.
    VcpuList(VcpuListArgs),
    /// Set the number of active VCPUs allowed for the domain.
    VcpuSet(VcpuSetArgs),
    /// List guest domains, excluding dom0, stubdoms, etc.
    VmList,
    /// Get information about Xen host.
    Info(InfoArgs),
    /// Read and/or clear dmesg buffer.
    Dmesg(DmesgArgs),
    /// Convert a domain name to domain id.
    Domid(NameArg),
    /// Convert a domain id to domain name.
    Domname(NameArg),
    /// Create a new virtual network device.
    NetworkAttach(NetworkAttachArgs),
    /// List virtual network interfaces for a domain.
    NetworkList(NetworkListArgs),
    /// Destroy a domain's virtual network device.
    NetworkDetach(NetworkDetachArgs),
    /// Create a new virtual block device.
    BlockAttach(BlockAttachArgs),
    /// List virtual block devices for a domain.
    BlockList(BlockListArgs),
    /// Destroy a domain's virtual block device.
    BlockDetach(BlockDetachArgs),
    /// Print uptime for all/some domains.
    Uptime(UptimeArgs),
    /// Add a suite: a read-only kernel and root image.
    SuiteAdd(SuiteAddArgs),
    /// List the suites.
    SuiteList(StoreListArgs),
    /// Remove a suite no server uses.
    SuiteRemove(StoreNameArgs),
    /// Add a server: a suite and its configuration data.
    ServerAdd(ServerAddArgs),
    /// List the servers.
    ServerList(StoreListArgs),
    /// Remove a server that is not running, and its disks.
    ServerRemove(StoreNameArgs),
    /// Write a server's configuration data as JSON.
    ServerExport(ServerExportArgs),
    /// Add a server, or replace its configuration data, from JSON.
    ServerImport(ServerImportArgs),
    /// Start a server: compose its disks and create its domain.
    ServerStart(ServerStartArgs),
    /// Watch a domain rxl created and apply its `on_*` actions (started by
    /// `create`, as xl's daemonized child).
    #[command(name = "__monitor", hide = true)]
    Monitor(MonitorArgs),
}

impl Command {
    /// Whether the command honours the global `-N` (xl's `can_dryrun`).
    fn can_dry_run(&self) -> bool {
        matches!(self, Command::Create(_))
    }
}

/// A single name or id argument (`domid`, `domname`).
#[derive(Debug, Args)]
pub struct NameArg {
    /// The domain name (`domid`) or id (`domname`).
    pub name: String,
}

/// Where a command writes: standard output and standard error.
pub struct Streams<'a> {
    /// Standard output.
    pub out: &'a mut dyn Write,
    /// Standard error: xl's messages and progress.
    pub err: &'a mut dyn Write,
}

impl std::fmt::Debug for Streams<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams").finish_non_exhaustive()
    }
}

/// Why a command failed. Each variant's message is xl's own for that
/// failure; where xl's message hides the cause (a libxl return code), the
/// cause is the variant's source and is logged.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Writing the output failed (xl's `flush_stream`).
    #[error("stdout: {0}")]
    Output(#[from] io::Error),
    /// The global `-N` was given to a command without a dry run.
    #[error("command does not implement -N (dryrun) option")]
    DryRunUnsupported,
    /// A command was given arguments it cannot take.
    #[error("'rxl {command}' takes {expected}.\nUsage: rxl {command} {usage}")]
    Usage {
        /// The subcommand.
        command: &'static str,
        /// What it takes.
        expected: &'static str,
        /// Its synopsis.
        usage: &'static str,
    },
    /// A domain argument names no domain (xl's `find_domain`).
    #[error("{qualifier} is an invalid domain identifier (rc={rc})")]
    InvalidDomain {
        /// The argument.
        qualifier: String,
        /// libxl's code for the failed look-up.
        rc: i32,
    },
    /// Like `InvalidDomain`, from the commands that use
    /// `libxl_domain_qualifier_to_domid` directly (`block-*`).
    #[error("{0} is an invalid domain identifier")]
    InvalidDomainQualifier(String),
    /// `list DOMAIN` for a domain id that does not exist.
    #[error("Error: Domain '{0}' does not exist.")]
    NoSuchDomain(String),
    /// Listing the domains failed.
    #[error("libxl_list_domain failed.")]
    ListDomains(#[source] HostError),
    /// Listing the VMs failed (`vm-list`).
    #[error("libxl_list_vm failed.")]
    ListVms(#[source] HostError),
    /// Reading one domain's information failed.
    #[error("libxl_domain_info failed (code {}).", .0.rc())]
    DomainInfo(#[source] HostError),
    /// Reading the physical host's information failed.
    #[error("libxl_physinfo failed.")]
    Physinfo(#[source] HostError),
    /// `create` with a second configuration file.
    #[error("'rxl create' takes one configuration file, then key=value settings.")]
    TwoConfigFiles,
    /// `create` without a configuration file.
    #[error("Config file not specified and none in save file")]
    NoConfigFile,
    /// Building the domain failed.
    #[error("failed to create the domain: {0}")]
    Create(#[source] HostError),
    /// The monitor could not watch or act on its domain.
    #[error("monitoring domain {domid}: {source}")]
    Monitor {
        /// The domain.
        domid: DomId,
        /// Why.
        #[source]
        source: HostError,
    },
    /// `destroy 0` without `-f`.
    #[error(
        "Not destroying domain 0; use -f to force.\n\
         This can only be done when using a disaggregated hardware domain and toolstack.\n"
    )]
    DestroyDom0,
    /// Destroying failed.
    #[error("destroy failed (rc={})", .0.rc())]
    Destroy(#[source] HostError),
    /// `shutdown`/`reboot` without a domain or `-a`.
    #[error("You must specify -a or a domain id.\n")]
    NoShutdownTarget,
    /// Asking the guest to shut down failed.
    #[error("shutdown failed (rc={})", .0.rc())]
    Shutdown(#[source] HostError),
    /// Asking the guest to reboot failed.
    #[error("reboot failed (rc={})", .0.rc())]
    Reboot(#[source] HostError),
    /// Waiting for the domains' shutdown or death failed.
    #[error("Failed to get event, quitting (rc={})", .0.rc())]
    WaitEvent(#[source] HostError),
    /// Pausing failed (xl ignores this; rxl reports it).
    #[error("cannot pause domain {domid}: {source}")]
    Pause {
        /// The domain.
        domid: DomId,
        /// Why.
        source: HostError,
    },
    /// Unpausing failed (xl ignores this; rxl reports it).
    #[error("cannot unpause domain {domid}: {source}")]
    Unpause {
        /// The domain.
        domid: DomId,
        /// Why.
        source: HostError,
    },
    /// `console -t` with an unknown type.
    #[error("console type supported are: pv, serial, vuart")]
    ConsoleType,
    /// Attaching to the console failed.
    #[error("Unable to attach console")]
    Console(#[source] HostError),
    /// `mem-set` with a size xl cannot parse.
    #[error("invalid memory size: {0}")]
    MemorySize(String),
    /// Setting the memory target failed.
    #[error("cannot set domid {domid} dynamic max memory to : {size}")]
    MemSet {
        /// The domain.
        domid: DomId,
        /// The size as given.
        size: String,
        /// Why, when the host refused it.
        source: Option<HostError>,
    },
    /// `vcpu-set` with a count that is not a number.
    #[error("Error: Invalid argument.")]
    VcpuCount,
    /// `vcpu-set` asks for more vCPUs than the host has CPUs.
    #[error(
        "You are overcommmitting! You have {host_cpus} physical CPUs and want {vcpus} vCPUs! \
         Aborting, use --ignore-host to continue"
    )]
    VcpuOvercommit {
        /// The host's CPUs.
        host_cpus: u32,
        /// The vCPUs asked for.
        vcpus: u64,
    },
    /// `vcpu-set` could not read the domain (xl fails silently here).
    #[error("cannot read domain {domid}: {source}")]
    VcpuDomain {
        /// The domain.
        domid: DomId,
        /// Why.
        source: HostError,
    },
    /// `vcpu-set` on a domain that disappeared.
    #[error("Domain {0} does not exist.")]
    VcpuNoDomain(DomId),
    /// Changing the online vCPUs failed.
    #[error("libxl_set_vcpuonline failed domid={domid} max_vcpus={vcpus}, rc: {}", .source.rc())]
    VcpuSet {
        /// The domain.
        domid: DomId,
        /// The vCPUs asked for.
        vcpus: u64,
        /// Why.
        source: HostError,
    },
    /// The device specification was rejected; the message says why.
    #[error("{0}")]
    DeviceSpec(String),
    /// Attaching a disk failed.
    #[error("libxl_device_disk_add failed.")]
    BlockAttach(#[source] HostError),
    /// `block-detach` names no disk of the domain.
    #[error("Error: Device {0} not connected.")]
    BlockNotConnected(String),
    /// Detaching a disk failed.
    #[error("libxl_device_disk_{} failed.", if *.force { "destroy" } else { "safe_remove" })]
    BlockDetach {
        /// Whether `-f` was given.
        force: bool,
        /// Why.
        source: HostError,
    },
    /// Attaching a network interface failed.
    #[error("libxl_device_nic_add failed.")]
    NetworkAttach(#[source] HostError),
    /// `network-detach` names no interface of the domain.
    #[error("Unknown device {0}.")]
    UnknownNic(String),
    /// Detaching a network interface failed.
    #[error("libxl_device_nic_del failed.")]
    NetworkDetach(#[source] HostError),
    /// Reading the hypervisor console failed.
    #[error("cannot read the hypervisor console: {0}")]
    Dmesg(#[source] HostError),
    /// Reading dom0's uptime failed.
    #[error("Can not get Dom0 uptime.")]
    Dom0Uptime(#[source] HostError),
    /// Reading the clock failed.
    #[error("Get localtime error")]
    Clock(#[source] HostError),
    /// `domid NAME` for an unknown name.
    #[error("Can't get domid of domain name '{0}', maybe this domain does not exist.")]
    NoDomainNamed(String),
    /// `domname` with something that is not a number.
    #[error("Invalid domain id.\n")]
    InvalidDomid,
    /// `domname ID` for an unknown id.
    #[error("Can't get domain name of domain id '{0}', maybe this domain does not exist.")]
    NoDomainWithId(DomId),
    /// A suite or server command failed.
    #[error(transparent)]
    Store(Box<StoreCommandError>),
}

impl CommandError {
    /// The exit status xl uses for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            // `exit(-1)`.
            CommandError::Dom0Uptime(_) | CommandError::Clock(_) => 255,
            // `create_domain`'s libxl code, negated.
            CommandError::TwoConfigFiles => 2,
            CommandError::NoConfigFile => neg_rc(host::rc::INVAL),
            CommandError::Create(source) => neg_rc(source.rc()),
            _ => 1,
        }
    }

    /// The cause behind xl's message, logged at error level (xl's
    /// libxl logs it).
    fn cause(&self) -> Option<&HostError> {
        match self {
            CommandError::ListDomains(e)
            | CommandError::ListVms(e)
            | CommandError::Physinfo(e)
            | CommandError::Destroy(e)
            | CommandError::Shutdown(e)
            | CommandError::Reboot(e)
            | CommandError::WaitEvent(e)
            | CommandError::Console(e)
            | CommandError::BlockAttach(e)
            | CommandError::BlockDetach { source: e, .. }
            | CommandError::NetworkAttach(e)
            | CommandError::NetworkDetach(e)
            | CommandError::VcpuSet { source: e, .. }
            | CommandError::MemSet {
                source: Some(e), ..
            }
            | CommandError::Dom0Uptime(e)
            | CommandError::Clock(e)
            | CommandError::DomainInfo(e) => Some(e),
            _ => None,
        }
    }
}

fn neg_rc(rc: i32) -> u8 {
    u8::try_from(rc.unsigned_abs()).unwrap_or(1)
}

/// Runs a parsed command line against `host`; returns the exit status.
pub fn run(cli: &Cli, host: &mut dyn Host, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut io = Streams { out, err };
    let result = dispatch(cli, host, &mut io).and_then(|()| Ok(io.out.flush()?));
    match result {
        Ok(()) => 0,
        Err(e) => {
            if let Some(cause) = e.cause() {
                log::error!("{cause}");
            }
            // Best effort: there is nowhere left to report a failing stderr.
            let _ = writeln!(io.err, "{e}");
            let _ = io.err.flush();
            e.exit_code()
        }
    }
}

fn dispatch(cli: &Cli, host: &mut dyn Host, io: &mut Streams<'_>) -> Result<(), CommandError> {
    if cli.dry_run && !cli.command.can_dry_run() {
        return Err(CommandError::DryRunUnsupported);
    }
    match &cli.command {
        Command::Create(args) => domain::create(args, cli.dry_run, host, io),
        Command::Monitor(args) => domain::monitor(args, host),
        Command::List(args) => domain::list(args, host, io),
        Command::Destroy(args) => domain::destroy(args, host),
        Command::Shutdown(args) => domain::shutdown_or_reboot(false, args, host, io),
        Command::Reboot(args) => domain::shutdown_or_reboot(true, args, host, io),
        Command::Pause(args) => domain::pause(args, host),
        Command::Unpause(args) => domain::unpause(args, host),
        Command::Console(args) => domain::console(args, host),
        Command::Uptime(args) => domain::uptime(args, host, io),
        Command::VmList => domain::vm_list(host, io),
        Command::Domid(args) => domain::domid(&args.name, host, io),
        Command::Domname(args) => domain::domname(&args.name, host, io),
        Command::MemSet(args) => memory::mem_set(args, host),
        Command::VcpuList(args) => vcpu::vcpu_list(args, host, io),
        Command::VcpuSet(args) => vcpu::vcpu_set(args, host),
        Command::Info(args) => info::info(args, host, io),
        Command::Dmesg(args) => info::dmesg(args, host, io),
        Command::NetworkAttach(args) => network::network_attach(args, host),
        Command::NetworkList(args) => network::network_list(args, host, io),
        Command::NetworkDetach(args) => network::network_detach(args, host),
        Command::BlockAttach(args) => block::block_attach(args, host),
        Command::BlockList(args) => block::block_list(args, host, io),
        Command::BlockDetach(args) => block::block_detach(args, host),
        Command::SuiteAdd(args) => store::suite_add(args),
        Command::SuiteList(args) => store::suite_list(args, io),
        Command::SuiteRemove(args) => store::suite_remove(args),
        Command::ServerAdd(args) => store::server_add(args),
        Command::ServerList(args) => store::server_list(args, io),
        Command::ServerRemove(args) => store::server_remove(args, host),
        Command::ServerExport(args) => store::server_export(args, io),
        Command::ServerImport(args) => store::server_import(args),
        Command::ServerStart(args) => store::server_start(args, host, io),
    }
}

/// libxl's `libxl_domain_qualifier_to_domid`: all digits (even none) is
/// an id, taken as is; anything else is a name to look up. The error is
/// libxl's code.
fn qualifier_to_domid(host: &dyn Host, qualifier: &str) -> Result<DomId, i32> {
    if qualifier.bytes().all(|b| b.is_ascii_digit()) {
        let id = strtoul_domid(qualifier);
        return Ok(id);
    }
    match host.domain_by_name(qualifier) {
        Ok(Some(domid)) => Ok(domid),
        Ok(None) => Err(host::rc::INVAL),
        Err(e) => {
            log::error!("{e}");
            Err(host::rc::NOMEM)
        }
    }
}

/// `strtoul(digits)` stored in a `uint32_t`.
fn strtoul_domid(digits: &str) -> DomId {
    // Truncation to 32 bits is what C's assignment does.
    format::strtoul_prefix(digits).unwrap_or(0) as DomId
}

/// xl's `find_domain`: a domain name or id, or the error xl exits with.
fn find_domain(host: &dyn Host, qualifier: &str) -> Result<DomId, CommandError> {
    qualifier_to_domid(host, qualifier).map_err(|rc| CommandError::InvalidDomain {
        qualifier: qualifier.to_owned(),
        rc,
    })
}

/// A domain's name as libxl's `libxl_domid_to_name` gives it to `printf`.
fn domain_name(host: &dyn Host, domid: DomId) -> String {
    host.domain_info(domid)
        .ok()
        .and_then(|d| d.name)
        .unwrap_or_else(|| format::C_NULL.to_owned())
}
