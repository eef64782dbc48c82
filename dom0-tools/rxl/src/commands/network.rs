//! Virtual network interfaces: `network-attach`, `network-list`,
//! `network-detach`, as xl 4.17's `xl_nic.c`.

use clap::Args;

use super::block::or_minus_one;
use super::format::atoi;
use super::{find_domain, CommandError, Streams};
use crate::host::{Host, HostError, MacAddr, NicSpec};

/// `network-attach <Domain> [type=<type>] [mac=<mac>] [bridge=<bridge>] ...`.
#[derive(Debug, Args)]
pub struct NetworkAttachArgs {
    /// The domain.
    #[arg(value_name = "Domain")]
    pub domain: String,
    /// The interface's settings, in xl-network-configuration(5) syntax:
    /// type=, mac=, bridge=, ip=, script=, backend=, vifname=, rate=,
    /// model=, accel=, mtu=.
    #[arg(value_name = "key=value")]
    pub settings: Vec<String>,
}

/// `network-list <Domain(s)>`.
#[derive(Debug, Args)]
pub struct NetworkListArgs {
    /// The domains.
    #[arg(value_name = "Domain", required = true)]
    pub domains: Vec<String>,
}

/// `network-detach <Domain> <DevId|mac>`.
#[derive(Debug, Args)]
pub struct NetworkDetachArgs {
    /// The domain.
    #[arg(value_name = "Domain")]
    pub domain: String,
    /// The interface: its device id or its MAC address.
    #[arg(value_name = "DevId|mac")]
    pub device: String,
}

/// `network-attach`.
pub(super) fn network_attach(
    args: &NetworkAttachArgs,
    host: &mut dyn Host,
) -> Result<(), CommandError> {
    let domid = find_domain(host, &args.domain)?;
    let nic = NicSpec {
        settings: args.settings.clone(),
    };
    match host.network_attach(domid, &nic) {
        Ok(()) => Ok(()),
        Err(HostError::Invalid(why)) => Err(CommandError::DeviceSpec(why)),
        Err(e) => Err(CommandError::NetworkAttach(e)),
    }
}

/// `network-list`: a table of the domains' interfaces.
pub(super) fn network_list(
    args: &NetworkListArgs,
    host: &mut dyn Host,
    io: &mut Streams<'_>,
) -> Result<(), CommandError> {
    writeln!(
        io.out,
        "{:<3} {:<2} {:<17} {:<6} {:<5} {:<6} {:>5}/{:<5} {:<30}",
        "Idx", "BE", "Mac Addr.", "handle", "state", "evt-ch", "tx-", "rx-ring-ref", "BE-path"
    )?;
    for qualifier in &args.domains {
        let domid = find_domain(host, qualifier)?;
        let nics = match host.network_devices(domid) {
            Ok(nics) => nics,
            Err(e) => {
                log::error!("cannot list the network interfaces of domain {domid}: {e}");
                continue;
            }
        };
        for n in &nics {
            // The MAC has no separator after it: "%6d" pads the handle.
            writeln!(
                io.out,
                "{:<3} {:<2} {}{:>6} {:>5} {:>6} {:>5}/{:<11} {:<30}",
                n.devid,
                n.backend_id,
                n.mac,
                n.devid,
                or_minus_one(n.state),
                or_minus_one(n.evtch),
                or_minus_one(n.tx_ring_ref),
                or_minus_one(n.rx_ring_ref),
                n.backend_path
            )?;
        }
    }
    Ok(())
}

/// `network-detach`: by MAC address when the argument has a colon, by
/// device id (`atoi`) otherwise.
pub(super) fn network_detach(
    args: &NetworkDetachArgs,
    host: &mut dyn Host,
) -> Result<(), CommandError> {
    let domid = find_domain(host, &args.domain)?;
    let unknown = || CommandError::UnknownNic(args.device.clone());
    let nics = host.network_devices(domid).map_err(|e| {
        log::error!("cannot list the network interfaces of domain {domid}: {e}");
        unknown()
    })?;
    let nic = if args.device.contains(':') {
        let mac: MacAddr = args.device.parse().map_err(|_| unknown())?;
        nics.iter().find(|n| n.mac == mac)
    } else {
        let devid = atoi(&args.device);
        nics.iter().find(|n| i64::from(n.devid) == devid)
    }
    .ok_or_else(unknown)?;
    host.network_detach(domid, nic.devid)
        .map_err(CommandError::NetworkDetach)
}
