//! The host: `info` and `dmesg`, as xl 4.17's `xl_info.c`.

use clap::Args;

use super::{CommandError, Streams};
use crate::host::{Host, PhysInfo, VersionInfo};

/// `info [-n] [name]`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// List host NUMA topology information.
    #[arg(short = 'n', long = "numa")]
    pub numa: bool,
    /// Print only the value of the fields whose name starts with this.
    pub name: Option<String>,
}

/// `dmesg [-c]`.
#[derive(Debug, Args)]
pub struct DmesgArgs {
    /// Clear dmesg buffer as well as printing it.
    #[arg(short = 'c', long = "clear")]
    pub clear: bool,
}

/// Writes `xl info`'s `key : value` lines, or with a filter (`xl info
/// free_memory`) only the values of the keys that start with it (xl's
/// `maybe_printf`).
struct InfoWriter<'a, 'b> {
    io: &'a mut Streams<'b>,
    filter: Option<&'a str>,
}

impl InfoWriter<'_, '_> {
    /// A `key                    : value` line.
    fn field(&mut self, key: &str, value: impl std::fmt::Display) -> Result<(), CommandError> {
        self.line(&format!("{key:<23}: {value}\n"))
    }

    fn line(&mut self, line: &str) -> Result<(), CommandError> {
        match self.filter {
            None => self.io.out.write_all(line.as_bytes())?,
            Some(filter) => {
                if !line.starts_with(filter) {
                    return Ok(());
                }
                if let Some(colon) = line.find(':') {
                    if let Some(value) = line[colon + 1..].strip_prefix(' ') {
                        self.io.out.write_all(value.as_bytes())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A line written as is, even with a filter (`-n`'s tables).
    fn raw(&mut self, text: &str) -> Result<(), CommandError> {
        Ok(self.io.out.write_all(text.as_bytes())?)
    }
}

/// `info`: xl's `print_info`. Sections that cannot be read are reported
/// and skipped; like xl, `info` always succeeds.
pub(super) fn info(
    args: &InfoArgs,
    host: &mut dyn Host,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    let filter = if args.numa {
        None
    } else {
        args.name.as_deref()
    };
    let mut w = InfoWriter { io, filter };
    let version = host.version_info();

    if let Ok(node) = host.node_info() {
        w.field("host", &node.nodename)?;
        w.field("release", &node.release)?;
        w.field("version", &node.version)?;
        w.field("machine", &node.machine)?;
    }

    match host.physinfo() {
        Ok(phys) => physinfo(&mut w, host, &phys, version.as_ref().ok())?,
        Err(e) => {
            log::error!("{e}");
            writeln!(w.io.err, "libxl_physinfo failed.")?;
        }
    }

    if args.numa {
        topology(&mut w, host)?;
        numa(&mut w, host)?;
    }

    match version {
        Ok(version) => match host.scheduler() {
            Ok(scheduler) => xeninfo(&mut w, &version, &scheduler)?,
            Err(e) => {
                log::error!("{e}");
                writeln!(w.io.err, "get_scheduler sysctl failed.")?;
            }
        },
        Err(e) => {
            log::error!("{e}");
            writeln!(w.io.err, "libxl_get_version_info failed.")?;
        }
    }

    w.field("xend_config_format", 4)
}

/// xl's `output_physinfo`.
fn physinfo(
    w: &mut InfoWriter<'_, '_>,
    host: &dyn Host,
    p: &PhysInfo,
    version: Option<&VersionInfo>,
) -> Result<(), CommandError> {
    w.field("nr_cpus", p.nr_cpus)?;
    w.field("max_cpu_id", p.max_cpu_id)?;
    w.field("nr_nodes", p.nr_nodes)?;
    w.field("cores_per_socket", p.cores_per_socket)?;
    w.field("threads_per_core", p.threads_per_core)?;
    w.field(
        "cpu_mhz",
        format!("{}.{:03}", p.cpu_khz / 1000, p.cpu_khz % 1000),
    )?;
    let hw_caps: Vec<String> = p.hw_caps.iter().map(|c| format!("{c:08x}")).collect();
    w.field("hw_caps", hw_caps.join(":"))?;

    let c = &p.virt_caps;
    let caps: String = [
        (c.pv, " pv"),
        (c.hvm, " hvm"),
        (c.hvm && c.directio, " hvm_directio"),
        (c.pv && c.directio, " pv_directio"),
        (c.hap, " hap"),
        (c.shadow, " shadow"),
        (c.iommu_hap_pt_share, " iommu_hap_pt_share"),
        (c.vmtrace, " vmtrace"),
        (c.vpmu, " vpmu"),
        (c.gnttab_v1, " gnttab-v1"),
        (c.gnttab_v2, " gnttab-v2"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, name)| *name)
    .collect();
    // No space after the colon: each capability brings its own.
    w.line(&format!("{:<23}:{caps}\n", "virt_caps"))?;

    if let Some(v) = version {
        let pages_per_mib = u64::from((1u32 << 20).checked_div(v.pagesize).unwrap_or(0));
        if pages_per_mib > 0 {
            let mib = |pages: u64| pages / pages_per_mib;
            w.field("total_memory", mib(p.total_pages))?;
            w.field(
                "free_memory",
                mib(p.free_pages.saturating_sub(p.outstanding_pages)),
            )?;
            w.field("sharing_freed_memory", mib(p.sharing_freed_pages))?;
            w.field("sharing_used_memory", mib(p.sharing_used_frames))?;
            w.field("outstanding_claims", mib(p.outstanding_pages))?;
        }
    }
    match host.free_cpus() {
        Ok(n) => w.field("free_cpus", n)?,
        Err(e) => log::error!("{e}"),
    }
    Ok(())
}

/// xl's `output_topologyinfo`.
fn topology(w: &mut InfoWriter<'_, '_>, host: &dyn Host) -> Result<(), CommandError> {
    let cpus = match host.cpu_topology() {
        Ok(cpus) => cpus,
        Err(e) => {
            log::error!("{e}");
            writeln!(w.io.err, "libxl_get_cpu_topology failed.")?;
            return Ok(());
        }
    };
    w.raw("cpu_topology           :\n")?;
    w.raw("cpu:    core    socket     node\n")?;
    for (i, cpu) in cpus.iter().enumerate() {
        if let Some(t) = cpu {
            w.raw(&format!(
                "{i:3}:    {:4}     {:4}     {:4}\n",
                t.core, t.socket, t.node
            ))?;
        }
    }

    let devices = match host.pci_topology() {
        Ok(devices) => devices,
        Err(e) => {
            log::error!("{e}");
            writeln!(w.io.err, "libxl_get_pci_topology failed.")?;
            return Ok(());
        }
    };
    w.raw("device topology        :\n")?;
    w.raw("device           node\n")?;
    let mut valid = 0;
    for dev in &devices {
        if let Some(node) = dev.node {
            w.raw(&format!(
                "{:04x}:{:02x}:{:02x}.{:01x}      {node}\n",
                dev.seg,
                dev.bus,
                (dev.devfn >> 3) & 0x1f,
                dev.devfn & 7
            ))?;
            valid += 1;
        }
    }
    if valid == 0 {
        w.raw("No device topology data available\n")?;
    }
    Ok(())
}

/// xl's `output_numainfo`.
fn numa(w: &mut InfoWriter<'_, '_>, host: &dyn Host) -> Result<(), CommandError> {
    let nodes = match host.numa_info() {
        Ok(nodes) => nodes,
        Err(e) => {
            log::error!("{e}");
            writeln!(w.io.err, "libxl_get_numainfo failed.")?;
            return Ok(());
        }
    };
    w.raw("numa_info              :\n")?;
    w.raw("node:    memsize    memfree    distances\n")?;
    for (i, node) in nodes.iter().enumerate() {
        if let Some(n) = node {
            let distances: Vec<String> = n.distances.iter().map(u32::to_string).collect();
            w.raw(&format!(
                "{i:4}:    {:6}     {:6}      {}\n",
                n.size >> 20,
                n.free >> 20,
                distances.join(",")
            ))?;
        }
    }
    Ok(())
}

/// xl's `output_xeninfo`.
fn xeninfo(
    w: &mut InfoWriter<'_, '_>,
    v: &VersionInfo,
    scheduler: &str,
) -> Result<(), CommandError> {
    w.field("xen_major", v.major)?;
    w.field("xen_minor", v.minor)?;
    w.field("xen_extra", &v.extra)?;
    w.field("xen_version", format!("{}.{}{}", v.major, v.minor, v.extra))?;
    w.field("xen_caps", &v.capabilities)?;
    w.field("xen_scheduler", scheduler)?;
    w.field("xen_pagesize", v.pagesize)?;
    w.field(
        "platform_params",
        format!("virt_start=0x{:x}", v.virt_start),
    )?;
    w.field("xen_changeset", &v.changeset)?;
    w.field("xen_commandline", &v.commandline)?;
    w.field("cc_compiler", &v.compiler)?;
    w.field("cc_compile_by", &v.compile_by)?;
    w.field("cc_compile_domain", &v.compile_domain)?;
    w.field("cc_compile_date", &v.compile_date)?;
    w.field("build_id", &v.build_id)
}

/// `dmesg`: the hypervisor's console ring, as is.
pub(super) fn dmesg(
    args: &DmesgArgs,
    host: &mut dyn Host,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    let ring = host
        .read_console_ring(args.clear)
        .map_err(CommandError::Dmesg)?;
    io.out.write_all(ring.as_bytes())?;
    Ok(())
}
