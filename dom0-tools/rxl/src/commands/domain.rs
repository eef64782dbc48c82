//! Domain life cycle and listing: `create`, `list`, `destroy`,
//! `shutdown`, `reboot`, `pause`, `unpause`, `console`, `uptime`,
//! `vm-list`, `domid`, `domname`.
//!
//! Formats and messages follow xl 4.17's `xl_vmcontrol.c` (life cycle),
//! `xl_info.c` (`list`, `uptime`, `vm-list`, `domid`, `domname`) and
//! `xl_console.c`.

use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Value};

use super::format::{self, cpu_seconds, libxl_json, ljust, rjust, C_NULL};
use super::{domain_name, find_domain, CommandError, Streams};
use crate::host::{
    ConsoleKind, CreateOutcome, CreateRequest, DomId, DomainEvent, DomainInfo, Host, HostError,
    Trigger,
};

/// One domain argument.
#[derive(Debug, Args)]
pub struct DomainArg {
    /// The domain's name or id.
    #[arg(value_name = "Domain")]
    pub domain: String,
}

/// `__monitor DOMID CONFIG [key=value...]`: rxl's own, started by `create`.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// The domain to watch.
    pub domid: DomId,
    /// The configuration it was created from (for its `on_*` actions and
    /// to restart it).
    pub config: PathBuf,
    /// The `key=value` overrides it was created with.
    pub overrides: Vec<String>,
}

/// `__monitor`: waits for the domain to shut down and does what its
/// configuration's `on_poweroff`/`on_reboot`/`on_crash`/`on_watchdog`
/// asks (xl's `handle_domain_death`): destroy it, restart it from the same
/// configuration (and go on watching the new domain), or leave it.
pub(super) fn monitor(args: &MonitorArgs, host: &mut dyn Host) -> Result<(), CommandError> {
    use crate::config::{Action, DomainConfig, Source};
    use crate::host::ShutdownReason;

    let mut domid = args.domid;
    let failed = |domid: DomId| move |source| CommandError::Monitor { domid, source };
    loop {
        let reason = match host.wait_domain_event(&[domid]).map_err(failed(domid))? {
            DomainEvent::Death { .. } => {
                log::info!("domain {domid} is gone; the monitor ends");
                return Ok(());
            }
            DomainEvent::Shutdown { reason, .. } => reason,
        };
        // The configuration is read again: actions as xl's defaults if it
        // is gone or broken.
        let cfg = std::fs::read_to_string(&args.config)
            .ok()
            .and_then(|text| DomainConfig::parse(Source::file(&args.config), &text, &args.overrides).ok());
        let action = match (reason, &cfg) {
            (ShutdownReason::Poweroff, Some(c)) => c.on_poweroff,
            (ShutdownReason::Reboot, Some(c)) => c.on_reboot,
            (ShutdownReason::Crash, Some(c)) => c.on_crash,
            (ShutdownReason::Watchdog, Some(c)) => c.on_watchdog,
            (ShutdownReason::Reboot, None) => Action::Restart,
            (ShutdownReason::Suspend, _) => continue,
            _ => Action::Destroy,
        };
        log::info!("domain {domid} shut down ({reason:?}): {action:?}");
        match action {
            Action::Preserve => return Ok(()),
            Action::Restart | Action::RenameRestart | Action::CoredumpRestart => {
                host.destroy(domid).map_err(failed(domid))?;
                let request = CreateRequest {
                    config_file: args.config.clone(),
                    extra_config: args.overrides.clone(),
                    ..CreateRequest::default()
                };
                match host.create(&request).map_err(failed(domid))? {
                    CreateOutcome::Created(new) => {
                        log::info!("domain {domid} restarted as {new}");
                        domid = new;
                    }
                    CreateOutcome::DryRun(_) => return Ok(()),
                }
            }
            _ => {
                host.destroy(domid).map_err(failed(domid))?;
                return Ok(());
            }
        }
    }
}

/// `create [options] [ConfigFile] [key=value...]`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Connect to the console after the domain is created.
    #[arg(short = 'c')]
    pub console: bool,
    /// Enable debug messages.
    #[arg(short = 'd')]
    pub debug: bool,
    /// Do not wait in the background for the death of the domain.
    #[arg(short = 'e')]
    pub no_monitor: bool,
    /// Run in foreground until death of the domain.
    #[arg(short = 'F')]
    pub foreground: bool,
    /// Use the given configuration file.
    #[arg(short = 'f', long = "defconfig", value_name = "FILE")]
    pub defconfig: Option<PathBuf>,
    /// Ignore global masks in xl.conf.
    #[arg(short = 'i', long = "ignore-global-affinity-masks")]
    pub ignore_global_affinity_masks: bool,
    /// Dry run - prints the resulting configuration (deprecated in favour
    /// of global -N option).
    #[arg(short = 'n', long = "dryrun")]
    pub dry_run: bool,
    /// Leave the domain paused after it is created.
    #[arg(short = 'p')]
    pub paused: bool,
    /// Quiet.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Connect to the VNC display after the domain is created.
    #[arg(short = 'V', long = "vncviewer")]
    pub vncviewer: bool,
    /// Pass VNC password to viewer via stdin.
    #[arg(short = 'A', long = "vncviewer-autopass")]
    pub vncviewer_autopass: bool,
    /// The configuration file, then `key=value` settings that override it.
    #[arg(value_name = "ConfigFile] [vars")]
    pub args: Vec<String>,
}

/// `list [options] [Domain]`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output all VM details.
    #[arg(short = 'l', long = "long")]
    pub long: bool,
    /// Prints out UUIDs and security context.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Prints out security context.
    #[arg(short = 'Z', long = "context")]
    pub context: bool,
    /// Prints the cpupool the domain is in.
    #[arg(short = 'c', long = "cpupool")]
    pub cpupool: bool,
    /// Prints out NUMA node affinity.
    #[arg(short = 'n', long = "numa")]
    pub numa: bool,
    /// The domain to list (default: all).
    #[arg(value_name = "Domain")]
    pub domains: Vec<String>,
}

/// `destroy [-f] <Domain>`.
#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// Permit destroying domain 0, which will only succeed when run from
    /// disaggregated toolstack domain with a hardware domain distinct from
    /// domain 0.
    #[arg(short = 'f')]
    pub force: bool,
    /// The domain.
    #[arg(value_name = "Domain")]
    pub domain: String,
}

/// `shutdown`/`reboot [options] <-a|Domain>`.
#[derive(Debug, Args)]
pub struct ShutdownArgs {
    /// All guest domains.
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// Fallback to ACPI power/reset event for HVM guests with no PV
    /// drivers.
    #[arg(short = 'F')]
    pub fallback: bool,
    /// Wait for guest(s) to shut down; twice: until they are destroyed.
    #[arg(short = 'w', long = "wait", action = clap::ArgAction::Count)]
    pub wait: u8,
    /// The domain.
    #[arg(value_name = "Domain")]
    pub domain: Option<String>,
}

/// `console [options] <Domain>`.
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// console type, pv , serial or vuart.
    #[arg(short = 't', value_name = "type")]
    pub kind: Option<String>,
    /// console number.
    #[arg(short = 'n', value_name = "number", allow_hyphen_values = true)]
    pub num: Option<String>,
    /// The domain.
    #[arg(value_name = "Domain")]
    pub domain: String,
}

/// `uptime [-s] [Domain...]`.
#[derive(Debug, Args)]
pub struct UptimeArgs {
    /// Short format: the current time, then the uptime without seconds.
    #[arg(short = 's')]
    pub short: bool,
    /// The domains (default: dom0 and all guests).
    #[arg(value_name = "Domain")]
    pub domains: Vec<String>,
}

/// `create`: xl's `main_create` and the front of `create_domain`; the
/// host parses, builds and monitors.
pub(super) fn create(
    args: &CreateArgs,
    global_dry_run: bool,
    host: &mut dyn Host,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    let mut config_file = args.defconfig.clone();
    let mut extra_config = Vec::new();
    for arg in &args.args {
        if arg.contains('=') {
            extra_config.push(arg.clone());
        } else if config_file.is_none() {
            config_file = Some(PathBuf::from(arg));
        } else {
            return Err(CommandError::TwoConfigFiles);
        }
    }
    let config_file = config_file.ok_or(CommandError::NoConfigFile)?;
    let request = CreateRequest {
        config_file,
        extra_config,
        dry_run: args.dry_run || global_dry_run,
        paused: args.paused,
        console_autoconnect: args.console,
        vnc: args.vncviewer || args.vncviewer_autopass,
        vnc_autopass: args.vncviewer_autopass,
        debug: args.debug,
        daemonize: !(args.foreground || args.no_monitor),
        monitor: !args.no_monitor,
        ignore_global_affinity_masks: args.ignore_global_affinity_masks,
    };
    if !args.quiet {
        writeln!(
            io.err,
            "Parsing config from {}",
            request.config_file.display()
        )?;
    }
    match host.create(&request).map_err(CommandError::Create)? {
        CreateOutcome::DryRun(config) => io.out.write_all(libxl_json(&config).as_bytes())?,
        CreateOutcome::Created(domid) => {
            log::info!("created domain {domid}");
            if request.console_autoconnect {
                // xl's autoconnect_console: the primary console, until the
                // user leaves it (Ctrl-]) or the guest goes.
                host.console(domid, None, 0).map_err(CommandError::Console)?;
            }
        }
    }
    Ok(())
}

/// `list`: xl's `main_list`, `list_domains` and `list_domains_details`.
pub(super) fn list(
    args: &ListArgs,
    host: &mut dyn Host,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    let domains = match args.domains.as_slice() {
        [] => host.list_domains().map_err(CommandError::ListDomains)?,
        [qualifier] => {
            let domid = find_domain(host, qualifier)?;
            match host.domain_info(domid) {
                Ok(info) => vec![info],
                Err(HostError::DomainNotFound(_)) => {
                    return Err(CommandError::NoSuchDomain(qualifier.clone()))
                }
                Err(e) => return Err(CommandError::DomainInfo(e)),
            }
        }
        _ => {
            return Err(CommandError::Usage {
                command: "list",
                expected: "at most one domain",
                usage: "[options] [Domain]",
            })
        }
    };
    if args.long {
        list_details(&domains, host, io)
    } else {
        list_table(args, &domains, host, io)
    }
}

/// `xl list`'s table.
fn list_table(
    args: &ListArgs,
    domains: &[DomainInfo],
    host: &dyn Host,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    const REASON_LETTERS: &[u8] = b"-rscwS";

    let mut header =
        String::from("Name                                        ID   Mem VCPUs\tState\tTime(s)");
    if args.verbose {
        header.push_str("   UUID                            Reason-Code\tSecurity Label");
    }
    if args.context && !args.verbose {
        header.push_str("   Security Label");
    }
    if args.cpupool {
        header.push_str("         Cpupool");
    }
    let nr_nodes = if args.numa {
        header.push_str(" NODE Affinity");
        Some(host.physinfo().map_err(CommandError::Physinfo)?.nr_nodes)
    } else {
        None
    };
    writeln!(io.out, "{header}")?;

    for d in domains {
        let s = &d.state;
        let flag = |on: bool, c: char| if on { c } else { '-' };
        let reason = match s.shutdown {
            None => '-',
            Some(r) => REASON_LETTERS
                .get(usize::from(r.code()))
                .map_or('?', |&c| char::from(c)),
        };
        let mut line = format!(
            "{} {:>5} {:>5} {:>5}     {}{}{}{}{}{}  {:>8.1}",
            ljust(d.name.as_deref().unwrap_or(C_NULL), 40),
            d.domid,
            (d.current_memkb + d.outstanding_memkb) / 1024,
            d.vcpu_online,
            flag(s.running, 'r'),
            flag(s.blocked, 'b'),
            flag(s.paused, 'p'),
            flag(s.shutdown.is_some(), 's'),
            reason,
            flag(s.dying, 'd'),
            cpu_seconds(d.cpu_time_ns),
        );
        if args.verbose {
            line.push_str(&format!(" {}", d.uuid));
            match s.shutdown {
                Some(r) => line.push_str(&format!(" {:>8x}", r.code())),
                None => line.push_str(&format!(" {:>8}", "-")),
            }
        }
        if args.verbose || args.context {
            line.push_str(&format!(" {:>16}", d.ssid_label.as_deref().unwrap_or("-")));
        }
        if args.cpupool {
            let pool = host.cpupool_name(d.cpupool).ok().flatten();
            line.push_str(&rjust(pool.as_deref().unwrap_or(C_NULL), 16));
        }
        if let Some(nr_nodes) = nr_nodes {
            let nodes = host.node_affinity(d.domid).unwrap_or_default();
            line.push(' ');
            line.push_str(&format::bitmap(&nodes, nr_nodes));
        }
        writeln!(io.out, "{line}")?;
    }
    Ok(())
}

/// `xl list -l`: a JSON array of `{"domid": N, "config": {...}}`, leaving
/// out domains without a stored configuration.
fn list_details(
    domains: &[DomainInfo],
    host: &dyn Host,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    let mut entries = Vec::new();
    for d in domains {
        match host.domain_config(d.domid) {
            Ok(Some(config)) => entries.push(json!({ "domid": d.domid, "config": config })),
            Ok(None) => {}
            Err(e) => log::error!(
                "cannot retrieve the configuration of domain {}: {e}",
                d.domid
            ),
        }
    }
    // xl `puts()`s the generator's buffer: one more newline.
    writeln!(io.out, "{}", libxl_json(&Value::Array(entries)))?;
    Ok(())
}

/// `destroy`.
pub(super) fn destroy(args: &DestroyArgs, host: &mut dyn Host) -> Result<(), CommandError> {
    let domid = find_domain(host, &args.domain)?;
    if domid == 0 && !args.force {
        return Err(CommandError::DestroyDom0);
    }
    host.destroy(domid).map_err(CommandError::Destroy)
}

/// `shutdown` and `reboot`: xl's `main_shutdown_or_reboot`.
pub(super) fn shutdown_or_reboot(
    reboot: bool,
    args: &ShutdownArgs,
    host: &mut dyn Host,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    let targets = if args.all {
        host.list_domains()
            .map_err(CommandError::ListDomains)?
            .into_iter()
            .filter(|d| d.domid != 0 && !d.xenstore_domain)
            .map(|d| d.domid)
            .collect()
    } else {
        let qualifier = args
            .domain
            .as_deref()
            .ok_or(CommandError::NoShutdownTarget)?;
        vec![find_domain(host, qualifier)?]
    };
    for &domid in &targets {
        signal_domain(reboot, domid, args.fallback, host, io)?;
    }
    if args.wait > 0 {
        wait_for_domains(targets, args.wait == 1, host, io)?;
    }
    Ok(())
}

/// xl's `shutdown_domain`/`reboot_domain`.
fn signal_domain(
    reboot: bool,
    domid: DomId,
    fallback: bool,
    host: &mut dyn Host,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    let (doing, what, trigger, event) = if reboot {
        ("Rebooting", "reboot", Trigger::Reset, "reset")
    } else {
        ("Shutting down", "shutdown", Trigger::Power, "power")
    };
    writeln!(io.err, "{doing} domain {domid}")?;
    let mut result = if reboot {
        host.reboot(domid)
    } else {
        host.shutdown(domid)
    };
    if let Err(HostError::NoParavirt(_)) = result {
        if fallback {
            let button = if reboot { "reset" } else { "power" };
            writeln!(
                io.err,
                "PV control interface not available: sending ACPI {button} button event."
            )?;
            result = host.send_trigger(domid, trigger, 0);
        } else {
            writeln!(
                io.err,
                "PV control interface not available: external graceful {what} not possible."
            )?;
            writeln!(io.err, "Use \"-F\" to fallback to ACPI {event} event.")?;
        }
    }
    result.map_err(if reboot {
        CommandError::Reboot
    } else {
        CommandError::Shutdown
    })
}

/// xl's `wait_for_domain_deaths`; its log lines go to stderr as xl's do.
fn wait_for_domains(
    mut waiting: Vec<DomId>,
    shutdown_is_enough: bool,
    host: &mut dyn Host,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    writeln!(io.err, "Waiting for {} domains", waiting.len())?;
    while !waiting.is_empty() {
        let event = host
            .wait_domain_event(&waiting)
            .map_err(CommandError::WaitEvent)?;
        let done = match event {
            DomainEvent::Death { domid } => {
                writeln!(io.err, "Domain {domid} has been destroyed")?;
                domid
            }
            DomainEvent::Shutdown { domid, reason } => {
                writeln!(
                    io.err,
                    "Domain {domid} has been shut down, reason code {}",
                    reason.code()
                )?;
                if !shutdown_is_enough {
                    writeln!(io.err, "Domain {domid} continue waiting for death")?;
                    continue;
                }
                domid
            }
        };
        let before = waiting.len();
        waiting.retain(|&d| d != done);
        if waiting.len() == before {
            log::warn!("ignoring an event for domain {done}, which is not waited for");
        }
    }
    Ok(())
}

/// `pause`.
pub(super) fn pause(args: &DomainArg, host: &mut dyn Host) -> Result<(), CommandError> {
    let domid = find_domain(host, &args.domain)?;
    host.pause(domid)
        .map_err(|source| CommandError::Pause { domid, source })
}

/// `unpause`.
pub(super) fn unpause(args: &DomainArg, host: &mut dyn Host) -> Result<(), CommandError> {
    let domid = find_domain(host, &args.domain)?;
    host.unpause(domid)
        .map_err(|source| CommandError::Unpause { domid, source })
}

/// `console`: xl's `main_console`.
pub(super) fn console(args: &ConsoleArgs, host: &mut dyn Host) -> Result<(), CommandError> {
    let kind = match args.kind.as_deref() {
        None => None,
        Some("pv") => Some(ConsoleKind::Pv),
        Some("serial") => Some(ConsoleKind::Serial),
        Some("vuart") => Some(ConsoleKind::Vuart),
        Some(_) => return Err(CommandError::ConsoleType),
    };
    let num = args.num.as_deref().map_or(0, format::atoi);
    let domid = find_domain(host, &args.domain)?;
    let num = u32::try_from(num)
        .map_err(|_| CommandError::Console(HostError::Invalid(format!("console number {num}"))))?;
    host.console(domid, kind, num)
        .map_err(CommandError::Console)
}

/// `uptime`: xl's `print_uptime`.
pub(super) fn uptime(
    args: &UptimeArgs,
    host: &mut dyn Host,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    let domids = args
        .domains
        .iter()
        .map(|q| find_domain(host, q))
        .collect::<Result<Vec<_>, _>>()?;
    let host: &dyn Host = host;
    let clock = host.wallclock().map_err(CommandError::Clock)?;
    let now = format!("{:02}:{:02}:{:02}", clock.hour, clock.minute, clock.second);

    if !args.short {
        writeln!(io.out, "{:<33} {:>4} Uptime", "Name", "ID")?;
    }
    let line = |io: &mut Streams<'_>, domid: DomId, uptime: u64| -> Result<(), CommandError> {
        let name = domain_name(host, domid);
        if args.short {
            let up = format::uptime_string(uptime, true);
            writeln!(io.out, " {now} up {up}, {name} ({domid})")?;
        } else {
            let up = format::uptime_string(uptime, false);
            writeln!(io.out, "{} {domid:>4} {up}", ljust(&name, 33))?;
        }
        Ok(())
    };
    let dom0 = |io: &mut Streams<'_>| -> Result<(), CommandError> {
        let uptime = host.dom0_uptime().map_err(CommandError::Dom0Uptime)?;
        line(io, 0, uptime)
    };
    let guest = |io: &mut Streams<'_>, domid: DomId| -> Result<(), CommandError> {
        match host.domain_start_time(domid) {
            Ok(Some(start)) => {
                // xl subtracts in 32 bits.
                let uptime = (clock.epoch_secs.wrapping_sub(start) & 0xffff_ffff) as u32;
                line(io, domid, u64::from(uptime))
            }
            Ok(None) => {
                log::error!("cannot get the start time of domain {domid}");
                Ok(())
            }
            Err(e) => {
                log::error!("cannot get the start time of domain {domid}: {e}");
                Ok(())
            }
        }
    };

    if domids.is_empty() {
        dom0(io)?;
        let vms = match host.list_domains() {
            Ok(vms) => vms,
            Err(e) => {
                log::error!("{e}");
                writeln!(io.err, "Could not list vms.")?;
                return Ok(());
            }
        };
        for vm in vms.iter().filter(|d| d.domid != 0 && !d.stubdom) {
            guest(io, vm.domid)?;
        }
    } else {
        for domid in domids {
            if domid == 0 {
                dom0(io)?;
            } else {
                guest(io, domid)?;
            }
        }
    }
    Ok(())
}

/// `vm-list`: xl's `list_vm` (every domain but stub domains).
pub(super) fn vm_list(host: &mut dyn Host, io: &mut Streams<'_>) -> Result<(), CommandError> {
    let vms = host.list_domains().map_err(CommandError::ListVms)?;
    writeln!(io.out, "UUID                                  ID    name")?;
    for vm in vms.iter().filter(|d| !d.stubdom) {
        writeln!(
            io.out,
            "{}  {}    {}",
            vm.uuid,
            vm.domid,
            ljust(vm.name.as_deref().unwrap_or(C_NULL), 30)
        )?;
    }
    Ok(())
}

/// `domid NAME`.
pub(super) fn domid(
    name: &str,
    host: &mut dyn Host,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    match host.domain_by_name(name) {
        Ok(Some(domid)) => Ok(writeln!(io.out, "{domid}")?),
        Ok(None) => Err(CommandError::NoDomainNamed(name.to_owned())),
        Err(e) => {
            log::error!("{e}");
            Err(CommandError::NoDomainNamed(name.to_owned()))
        }
    }
}

/// `domname ID`.
pub(super) fn domname(
    id: &str,
    host: &mut dyn Host,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    let (value, any_digits) = format::strtol_prefix(id);
    // C stores the `long` in a `uint32_t`.
    let domid = value as DomId;
    if domid == 0 && !any_digits {
        return Err(CommandError::InvalidDomid);
    }
    match host.domain_info(domid).ok().and_then(|d| d.name) {
        Some(name) => Ok(writeln!(io.out, "{name}")?),
        None => Err(CommandError::NoDomainWithId(domid)),
    }
}
