//! Virtual block devices: `block-attach`, `block-list`, `block-detach`, as
//! xl 4.17's `xl_block.c`.

use clap::Args;

use super::{find_domain, qualifier_to_domid, CommandError, Streams};
use crate::host::{DiskSpec, Host, HostError};

/// `block-attach <Domain> <disk-spec-component(s)>...`.
#[derive(Debug, Args)]
pub struct BlockAttachArgs {
    /// The domain.
    #[arg(value_name = "Domain")]
    pub domain: String,
    /// The disk, in xl-disk-configuration(5) syntax.
    #[arg(value_name = "disk-spec-component", required = true)]
    pub spec: Vec<String>,
}

/// `block-list <Domain(s)>`.
#[derive(Debug, Args)]
pub struct BlockListArgs {
    /// The domains.
    #[arg(value_name = "Domain", required = true)]
    pub domains: Vec<String>,
}

/// `block-detach [-f] <Domain> <DevId>`.
#[derive(Debug, Args)]
pub struct BlockDetachArgs {
    /// Do not wait for the domain to release the device.
    #[arg(short = 'f', long = "force")]
    pub force: bool,
    /// The domain.
    #[arg(value_name = "Domain")]
    pub domain: String,
    /// The device: its guest name (`xvdb`) or its device id (`51728`).
    #[arg(value_name = "DevId")]
    pub device: String,
}

/// `block-attach`.
pub(super) fn block_attach(
    args: &BlockAttachArgs,
    host: &mut dyn Host,
) -> Result<(), CommandError> {
    let domid = qualifier_to_domid(host, &args.domain)
        .map_err(|_| CommandError::InvalidDomainQualifier(args.domain.clone()))?;
    let disk = DiskSpec {
        components: args.spec.clone(),
    };
    match host.block_attach(domid, &disk) {
        Ok(()) => Ok(()),
        Err(HostError::Invalid(why)) => Err(CommandError::DeviceSpec(why)),
        Err(e) => Err(CommandError::BlockAttach(e)),
    }
}

/// `block-list`: a table of the domains' disks. Unknown domains are
/// reported and skipped; the command itself succeeds, as xl's does.
pub(super) fn block_list(
    args: &BlockListArgs,
    host: &mut dyn Host,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    writeln!(
        io.out,
        "{:<5} {:<3} {:<6} {:<5} {:<6} {:<8} {:<30}",
        "Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"
    )?;
    for qualifier in &args.domains {
        let Ok(domid) = qualifier_to_domid(host, qualifier) else {
            writeln!(
                io.err,
                "{}",
                CommandError::InvalidDomainQualifier(qualifier.clone())
            )?;
            continue;
        };
        let disks = match host.block_devices(domid) {
            Ok(disks) => disks,
            Err(e) => {
                log::error!("cannot list the disks of domain {domid}: {e}");
                continue;
            }
        };
        for d in &disks {
            writeln!(
                io.out,
                "{:<5} {:<3} {:<6} {:<5} {:<6} {:<8} {:<30}",
                d.devid,
                d.backend_id,
                d.frontend_id,
                or_minus_one(d.state),
                or_minus_one(d.evtch),
                or_minus_one(d.ring_ref),
                d.backend_path
            )?;
        }
    }
    Ok(())
}

/// A xenstore number libxl read, or -1 where the node was missing.
pub(super) fn or_minus_one(value: Option<u32>) -> i64 {
    value.map_or(-1, i64::from)
}

/// `block-detach`.
pub(super) fn block_detach(
    args: &BlockDetachArgs,
    host: &mut dyn Host,
) -> Result<(), CommandError> {
    let domid = find_domain(host, &args.domain)?;
    let not_connected = || CommandError::BlockNotConnected(args.device.clone());
    let disks = host.block_devices(domid).map_err(|e| {
        log::error!("cannot list the disks of domain {domid}: {e}");
        not_connected()
    })?;
    let devid = args.device.parse::<u32>().ok();
    let disk = disks
        .iter()
        .find(|d| d.vdev.as_deref() == Some(args.device.as_str()) || Some(d.devid) == devid)
        .ok_or_else(not_connected)?;
    host.block_detach(domid, disk.devid, args.force)
        .map_err(|source| CommandError::BlockDetach {
            force: args.force,
            source,
        })
}
