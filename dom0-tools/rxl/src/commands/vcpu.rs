//! vCPUs: `vcpu-list` and `vcpu-set`, as xl 4.17's `xl_vcpu.c`.

use clap::Args;

use super::format::{self, cpu_seconds, ljust};
use super::{domain_name, find_domain, CommandError, Streams};
use crate::host::{DomId, Host, HostError, VcpuInfo};

/// `vcpu-list [Domain...]`.
#[derive(Debug, Args)]
pub struct VcpuListArgs {
    /// The domains (default: all).
    #[arg(value_name = "Domain")]
    pub domains: Vec<String>,
}

/// `vcpu-set [-i] <Domain> <vCPUs>`.
#[derive(Debug, Args)]
pub struct VcpuSetArgs {
    /// Don't limit the vCPU based on the host CPU count.
    #[arg(short = 'i', long = "ignore-host")]
    pub ignore_host: bool,
    /// The domain.
    #[arg(value_name = "Domain")]
    pub domain: String,
    /// How many vCPUs to have online.
    #[arg(value_name = "vCPUs", allow_hyphen_values = true)]
    pub vcpus: String,
}

/// `vcpu-list`: one line per vCPU. Domains whose vCPUs cannot be read are
/// skipped; like xl, the command succeeds unless a name is unknown.
pub(super) fn vcpu_list(
    args: &VcpuListArgs,
    host: &mut dyn Host,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    let host: &dyn Host = host;
    let phys = match host.physinfo() {
        Ok(phys) => phys,
        Err(e) => {
            log::error!("{e}");
            writeln!(io.err, "libxl_physinfo failed.")?;
            return Ok(());
        }
    };
    let nr_cpus = phys.max_cpu_id + 1;
    writeln!(
        io.out,
        "{:<32} {:>5} {:>5} {:>5} {:>5} {:>9} Affinity (Hard / Soft)",
        "Name", "ID", "VCPU", "CPU", "State", "Time(s)"
    )?;
    if args.domains.is_empty() {
        let domains = match host.list_domains() {
            Ok(domains) => domains,
            Err(e) => {
                log::error!("{e}");
                writeln!(io.err, "libxl_list_domain failed.")?;
                return Ok(());
            }
        };
        for d in domains {
            domain_vcpus(d.domid, nr_cpus, host, io)?;
        }
    } else {
        for qualifier in &args.domains {
            let domid = find_domain(host, qualifier)?;
            domain_vcpus(domid, nr_cpus, host, io)?;
        }
    }
    Ok(())
}

fn domain_vcpus(
    domid: DomId,
    nr_cpus: u32,
    host: &dyn Host,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    let vcpus = match host.vcpu_info(domid) {
        Ok(vcpus) => vcpus,
        Err(e) => {
            log::error!("cannot list the vCPUs of domain {domid}: {e}");
            return Ok(());
        }
    };
    for vcpu in &vcpus {
        let name = domain_name(host, domid);
        writeln!(io.out, "{}", vcpu_line(&name, domid, vcpu, nr_cpus))?;
    }
    Ok(())
}

/// xl's `print_vcpuinfo`, without the newline.
fn vcpu_line(name: &str, domid: DomId, v: &VcpuInfo, nr_cpus: u32) -> String {
    let cpu_and_state = if v.online {
        format!(
            "{:>5} {:>3}{}- ",
            v.cpu,
            if v.running { 'r' } else { '-' },
            if v.blocked { 'b' } else { '-' }
        )
    } else {
        format!("{:>5} {:>3}{}p ", '-', '-', '-')
    };
    format!(
        "{} {domid:>5} {:>5}{cpu_and_state}{:>9.1}  {} / {}",
        ljust(name, 32),
        v.vcpuid,
        cpu_seconds(v.time_ns),
        format::bitmap(&v.hard_affinity, nr_cpus),
        format::bitmap(&v.soft_affinity, nr_cpus),
    )
}

/// `vcpu-set`: xl's `vcpuset`.
pub(super) fn vcpu_set(args: &VcpuSetArgs, host: &mut dyn Host) -> Result<(), CommandError> {
    let domid = find_domain(host, &args.domain)?;
    let vcpus = format::strtoul_prefix(&args.vcpus)
        .filter(|&n| n <= i32::MAX as u64)
        .ok_or(CommandError::VcpuCount)?;
    if !args.ignore_host {
        let online = host
            .domain_info(domid)
            .map_err(|source| CommandError::VcpuDomain { domid, source })?
            .vcpu_online;
        // xl compares with `libxl_get_max_cpus`, which is `max_cpu_id + 1`;
        // when that fails (-1 as unsigned) nothing is an overcommit.
        let host_cpus = host.physinfo().map_or(u32::MAX, |p| p.max_cpu_id + 1);
        if vcpus > u64::from(online) && vcpus > u64::from(host_cpus) {
            return Err(CommandError::VcpuOvercommit { host_cpus, vcpus });
        }
    }
    // Checked against i32::MAX above.
    let count = vcpus as u32;
    match host.set_vcpus_online(domid, count) {
        Ok(()) => Ok(()),
        Err(HostError::DomainNotFound(_)) => Err(CommandError::VcpuNoDomain(domid)),
        Err(source) => Err(CommandError::VcpuSet {
            domid,
            vcpus,
            source,
        }),
    }
}
