//! Event channels (`xen/event_channel.h`): the `EVTCHNOP_*` sub-operations
//! of `__HYPERVISOR_event_channel_op` and their argument structures.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::hypercall::{abi_enum, UnknownValue};
use super::{DomId, EvtchnPort};

/// `EVTCHNOP_bind_interdomain`: connect to a remote domain's unbound port.
pub const EVTCHNOP_BIND_INTERDOMAIN: u32 = 0;
/// `EVTCHNOP_bind_virq`: bind a virtual IRQ to a new local port.
pub const EVTCHNOP_BIND_VIRQ: u32 = 1;
/// `EVTCHNOP_bind_pirq`: bind a physical IRQ to a new local port.
pub const EVTCHNOP_BIND_PIRQ: u32 = 2;
/// `EVTCHNOP_close`: close a port.
pub const EVTCHNOP_CLOSE: u32 = 3;
/// `EVTCHNOP_send`: notify the remote end of a port.
pub const EVTCHNOP_SEND: u32 = 4;
/// `EVTCHNOP_status`: query a port's state.
pub const EVTCHNOP_STATUS: u32 = 5;
/// `EVTCHNOP_alloc_unbound`: allocate a port a remote domain may bind to.
pub const EVTCHNOP_ALLOC_UNBOUND: u32 = 6;
/// `EVTCHNOP_bind_ipi`: allocate an inter-vCPU notification port.
pub const EVTCHNOP_BIND_IPI: u32 = 7;
/// `EVTCHNOP_bind_vcpu`: deliver a port's events to another vCPU.
pub const EVTCHNOP_BIND_VCPU: u32 = 8;
/// `EVTCHNOP_unmask`: unmask a port, redelivering a pending event.
pub const EVTCHNOP_UNMASK: u32 = 9;
/// `EVTCHNOP_reset`: close all of a domain's ports.
pub const EVTCHNOP_RESET: u32 = 10;
/// `EVTCHNOP_init_control`: switch a vCPU to the FIFO ABI.
pub const EVTCHNOP_INIT_CONTROL: u32 = 11;
/// `EVTCHNOP_expand_array`: add a page to the FIFO event array.
pub const EVTCHNOP_EXPAND_ARRAY: u32 = 12;
/// `EVTCHNOP_set_priority`: set a port's FIFO priority.
pub const EVTCHNOP_SET_PRIORITY: u32 = 13;

abi_enum! {
    /// An event channel sub-operation (`cmd` of `__HYPERVISOR_event_channel_op`).
    pub enum EvtchnOp: u32, "event channel operation" {
        /// See [`EvtchnBindInterdomain`].
        BindInterdomain = EVTCHNOP_BIND_INTERDOMAIN => "EVTCHNOP_bind_interdomain",
        /// See [`EvtchnBindVirq`].
        BindVirq = EVTCHNOP_BIND_VIRQ => "EVTCHNOP_bind_virq",
        /// Bind a physical IRQ.
        BindPirq = EVTCHNOP_BIND_PIRQ => "EVTCHNOP_bind_pirq",
        /// See [`EvtchnClose`].
        Close = EVTCHNOP_CLOSE => "EVTCHNOP_close",
        /// See [`EvtchnSend`].
        Send = EVTCHNOP_SEND => "EVTCHNOP_send",
        /// See [`EvtchnStatus`].
        Status = EVTCHNOP_STATUS => "EVTCHNOP_status",
        /// See [`EvtchnAllocUnbound`].
        AllocUnbound = EVTCHNOP_ALLOC_UNBOUND => "EVTCHNOP_alloc_unbound",
        /// See [`EvtchnBindIpi`].
        BindIpi = EVTCHNOP_BIND_IPI => "EVTCHNOP_bind_ipi",
        /// See [`EvtchnBindVcpu`].
        BindVcpu = EVTCHNOP_BIND_VCPU => "EVTCHNOP_bind_vcpu",
        /// See [`EvtchnUnmask`].
        Unmask = EVTCHNOP_UNMASK => "EVTCHNOP_unmask",
        /// See [`EvtchnReset`].
        Reset = EVTCHNOP_RESET => "EVTCHNOP_reset",
        /// Switch to the FIFO ABI.
        InitControl = EVTCHNOP_INIT_CONTROL => "EVTCHNOP_init_control",
        /// Grow the FIFO event array.
        ExpandArray = EVTCHNOP_EXPAND_ARRAY => "EVTCHNOP_expand_array",
        /// Set a FIFO priority.
        SetPriority = EVTCHNOP_SET_PRIORITY => "EVTCHNOP_set_priority",
    }
}

/// `EVTCHNSTAT_closed`: the port is not in use.
pub const EVTCHNSTAT_CLOSED: u32 = 0;
/// `EVTCHNSTAT_unbound`: the port waits for a remote domain to bind it.
pub const EVTCHNSTAT_UNBOUND: u32 = 1;
/// `EVTCHNSTAT_interdomain`: the port is connected to a remote port.
pub const EVTCHNSTAT_INTERDOMAIN: u32 = 2;
/// `EVTCHNSTAT_pirq`: the port is bound to a physical IRQ.
pub const EVTCHNSTAT_PIRQ: u32 = 3;
/// `EVTCHNSTAT_virq`: the port is bound to a virtual IRQ.
pub const EVTCHNSTAT_VIRQ: u32 = 4;
/// `EVTCHNSTAT_ipi`: the port is an inter-vCPU notification.
pub const EVTCHNSTAT_IPI: u32 = 5;

abi_enum! {
    /// The `status` field of [`EvtchnStatus`].
    pub enum EvtchnStatusKind: u32, "event channel status" {
        /// Not in use.
        Closed = EVTCHNSTAT_CLOSED => "EVTCHNSTAT_closed",
        /// Waiting for a remote domain.
        Unbound = EVTCHNSTAT_UNBOUND => "EVTCHNSTAT_unbound",
        /// Connected to a remote port.
        Interdomain = EVTCHNSTAT_INTERDOMAIN => "EVTCHNSTAT_interdomain",
        /// Bound to a physical IRQ.
        Pirq = EVTCHNSTAT_PIRQ => "EVTCHNSTAT_pirq",
        /// Bound to a virtual IRQ.
        Virq = EVTCHNSTAT_VIRQ => "EVTCHNSTAT_virq",
        /// Inter-vCPU notification.
        Ipi = EVTCHNSTAT_IPI => "EVTCHNSTAT_ipi",
    }
}

/// `EVTCHNOP_alloc_unbound`: allocate a port in `dom` that `remote_dom` may
/// later bind with [`EvtchnBindInterdomain`].
#[doc(alias = "evtchn_alloc_unbound")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EvtchnAllocUnbound {
    /// IN: the domain that owns the new port (usually `DOMID_SELF`).
    pub dom: DomId,
    /// IN: the domain allowed to bind to it.
    pub remote_dom: DomId,
    /// OUT: the allocated port.
    pub port: EvtchnPort,
}
const _: () = assert!(core::mem::size_of::<EvtchnAllocUnbound>() == 8);
const _: () = assert!(core::mem::offset_of!(EvtchnAllocUnbound, dom) == 0);
const _: () = assert!(core::mem::offset_of!(EvtchnAllocUnbound, remote_dom) == 2);
const _: () = assert!(core::mem::offset_of!(EvtchnAllocUnbound, port) == 4);

/// `EVTCHNOP_bind_interdomain`: connect a new local port to
/// `remote_dom:remote_port`, which must be unbound and allocated for us.
#[doc(alias = "evtchn_bind_interdomain")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EvtchnBindInterdomain {
    /// IN: the remote domain.
    pub remote_dom: DomId,
    /// Padding (implicit in C).
    pub _pad: [u8; 2],
    /// IN: the remote, unbound port.
    pub remote_port: EvtchnPort,
    /// OUT: the new local port.
    pub local_port: EvtchnPort,
}
const _: () = assert!(core::mem::size_of::<EvtchnBindInterdomain>() == 12);
const _: () = assert!(core::mem::offset_of!(EvtchnBindInterdomain, remote_dom) == 0);
const _: () = assert!(core::mem::offset_of!(EvtchnBindInterdomain, remote_port) == 4);
const _: () = assert!(core::mem::offset_of!(EvtchnBindInterdomain, local_port) == 8);

/// `EVTCHNOP_bind_virq`: bind a virtual IRQ (`VIRQ_*`) on a vCPU to a new port.
#[doc(alias = "evtchn_bind_virq")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EvtchnBindVirq {
    /// IN: the VIRQ number, see [`crate::xen::hypercall::Virq`].
    pub virq: u32,
    /// IN: the vCPU that receives it.
    pub vcpu: u32,
    /// OUT: the new local port.
    pub port: EvtchnPort,
}
const _: () = assert!(core::mem::size_of::<EvtchnBindVirq>() == 12);
const _: () = assert!(core::mem::offset_of!(EvtchnBindVirq, virq) == 0);
const _: () = assert!(core::mem::offset_of!(EvtchnBindVirq, vcpu) == 4);
const _: () = assert!(core::mem::offset_of!(EvtchnBindVirq, port) == 8);

/// `EVTCHNOP_bind_ipi`: allocate a port that notifies `vcpu` of this domain.
#[doc(alias = "evtchn_bind_ipi")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EvtchnBindIpi {
    /// IN: the vCPU to notify.
    pub vcpu: u32,
    /// OUT: the new local port.
    pub port: EvtchnPort,
}
const _: () = assert!(core::mem::size_of::<EvtchnBindIpi>() == 8);
const _: () = assert!(core::mem::offset_of!(EvtchnBindIpi, vcpu) == 0);
const _: () = assert!(core::mem::offset_of!(EvtchnBindIpi, port) == 4);

/// `EVTCHNOP_close`: close a local port; its remote end becomes unbound.
#[doc(alias = "evtchn_close")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EvtchnClose {
    /// IN: the port to close.
    pub port: EvtchnPort,
}
const _: () = assert!(core::mem::size_of::<EvtchnClose>() == 4);
const _: () = assert!(core::mem::offset_of!(EvtchnClose, port) == 0);

/// `EVTCHNOP_send`: raise an event on the remote end of a local port.
#[doc(alias = "evtchn_send")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EvtchnSend {
    /// IN: the local port.
    pub port: EvtchnPort,
}
const _: () = assert!(core::mem::size_of::<EvtchnSend>() == 4);
const _: () = assert!(core::mem::offset_of!(EvtchnSend, port) == 0);

/// `EVTCHNOP_unmask`: unmask a local port.
#[doc(alias = "evtchn_unmask")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EvtchnUnmask {
    /// IN: the local port.
    pub port: EvtchnPort,
}
const _: () = assert!(core::mem::size_of::<EvtchnUnmask>() == 4);
const _: () = assert!(core::mem::offset_of!(EvtchnUnmask, port) == 0);

/// `EVTCHNOP_bind_vcpu`: deliver a port's events to another vCPU.
#[doc(alias = "evtchn_bind_vcpu")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EvtchnBindVcpu {
    /// IN: the local port.
    pub port: EvtchnPort,
    /// IN: the vCPU that should receive its events.
    pub vcpu: u32,
}
const _: () = assert!(core::mem::size_of::<EvtchnBindVcpu>() == 8);
const _: () = assert!(core::mem::offset_of!(EvtchnBindVcpu, port) == 0);
const _: () = assert!(core::mem::offset_of!(EvtchnBindVcpu, vcpu) == 4);

/// `EVTCHNOP_reset`: close every port of a domain.
#[doc(alias = "evtchn_reset")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EvtchnReset {
    /// IN: the domain (usually `DOMID_SELF`).
    pub dom: DomId,
}
const _: () = assert!(core::mem::size_of::<EvtchnReset>() == 2);
const _: () = assert!(core::mem::offset_of!(EvtchnReset, dom) == 0);

/// `EVTCHNOP_status`: query the state of `dom:port`.
///
/// The C `u` union is kept as raw words; [`EvtchnStatus::binding`] decodes
/// it according to `status`.
#[doc(alias = "evtchn_status")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EvtchnStatus {
    /// IN: the domain that owns the port.
    pub dom: DomId,
    /// Padding (implicit in C).
    pub _pad: [u8; 2],
    /// IN: the port.
    pub port: EvtchnPort,
    /// OUT: `EVTCHNSTAT_*`, see [`EvtchnStatusKind`].
    pub status: u32,
    /// OUT: the vCPU the port's events go to.
    pub vcpu: u32,
    /// OUT: the C union `u`, whose meaning depends on `status`.
    pub u: [u32; 2],
}
const _: () = assert!(core::mem::size_of::<EvtchnStatus>() == 24);
const _: () = assert!(core::mem::offset_of!(EvtchnStatus, dom) == 0);
const _: () = assert!(core::mem::offset_of!(EvtchnStatus, port) == 4);
const _: () = assert!(core::mem::offset_of!(EvtchnStatus, status) == 8);
const _: () = assert!(core::mem::offset_of!(EvtchnStatus, vcpu) == 12);
const _: () = assert!(core::mem::offset_of!(EvtchnStatus, u) == 16);

/// The `u.interdomain` member of [`EvtchnStatus`]'s union.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EvtchnStatusInterdomain {
    /// The remote domain.
    pub dom: DomId,
    /// Padding (implicit in C).
    pub _pad: [u8; 2],
    /// The remote port.
    pub port: EvtchnPort,
}
const _: () = assert!(core::mem::size_of::<EvtchnStatusInterdomain>() == 8);
const _: () = assert!(core::mem::offset_of!(EvtchnStatusInterdomain, dom) == 0);
const _: () = assert!(core::mem::offset_of!(EvtchnStatusInterdomain, port) == 4);

/// What a port is bound to, decoded from an [`EvtchnStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvtchnBinding {
    /// Not in use.
    Closed,
    /// Waiting for `remote_dom` to bind it.
    Unbound {
        /// The domain allowed to bind.
        remote_dom: DomId,
    },
    /// Connected to `remote_dom:remote_port`.
    Interdomain {
        /// The remote domain.
        remote_dom: DomId,
        /// The remote port.
        remote_port: EvtchnPort,
    },
    /// Bound to a physical IRQ.
    Pirq(u32),
    /// Bound to a virtual IRQ.
    Virq(u32),
    /// An inter-vCPU notification.
    Ipi,
}

impl EvtchnStatus {
    /// A query for `dom:port`.
    pub const fn query(dom: DomId, port: EvtchnPort) -> Self {
        Self {
            dom,
            _pad: [0; 2],
            port,
            status: 0,
            vcpu: 0,
            u: [0; 2],
        }
    }

    /// The `status` field as a typed value.
    pub fn kind(&self) -> Result<EvtchnStatusKind, UnknownValue<u32>> {
        EvtchnStatusKind::try_from(self.status)
    }

    /// The union member selected by `status`, decoded.
    pub fn binding(&self) -> Result<EvtchnBinding, UnknownValue<u32>> {
        Ok(match self.kind()? {
            EvtchnStatusKind::Closed => EvtchnBinding::Closed,
            EvtchnStatusKind::Unbound => {
                let [word, _] = self.u;
                let [remote_dom, _]: [u16; 2] = zerocopy::transmute!(word);
                EvtchnBinding::Unbound { remote_dom }
            }
            EvtchnStatusKind::Interdomain => {
                let remote: EvtchnStatusInterdomain = zerocopy::transmute!(self.u);
                EvtchnBinding::Interdomain {
                    remote_dom: remote.dom,
                    remote_port: remote.port,
                }
            }
            EvtchnStatusKind::Pirq => EvtchnBinding::Pirq(self.u[0]),
            EvtchnStatusKind::Virq => EvtchnBinding::Virq(self.u[0]),
            EvtchnStatusKind::Ipi => EvtchnBinding::Ipi,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with(status: u32, u: [u32; 2]) -> EvtchnStatus {
        EvtchnStatus {
            status,
            u,
            ..EvtchnStatus::query(0, 5)
        }
    }

    #[test]
    fn interdomain_status_decodes_remote_end() {
        let mut status = status_with(EVTCHNSTAT_INTERDOMAIN, [0; 2]);
        status.u = zerocopy::transmute!(EvtchnStatusInterdomain {
            dom: 7,
            _pad: [0; 2],
            port: 42
        });

        assert_eq!(
            status.binding(),
            Ok(EvtchnBinding::Interdomain {
                remote_dom: 7,
                remote_port: 42
            })
        );
    }

    #[test]
    fn unbound_status_decodes_remote_domain() {
        let word: u32 = zerocopy::transmute!([3u16, 0]);
        let status = status_with(EVTCHNSTAT_UNBOUND, [word, 0]);

        assert_eq!(
            status.binding(),
            Ok(EvtchnBinding::Unbound { remote_dom: 3 })
        );
    }

    #[test]
    fn unknown_status_is_rejected() {
        let status = status_with(6, [0; 2]);

        assert_eq!(
            status.binding(),
            Err(UnknownValue {
                kind: "event channel status",
                value: 6
            })
        );
    }
}
