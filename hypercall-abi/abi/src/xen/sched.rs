//! Scheduler operations (`xen/sched.h`): the `SCHEDOP_*` sub-operations of
//! `__HYPERVISOR_sched_op` and the `SHUTDOWN_*` reasons a domain gives when
//! it stops.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::hypercall::{abi_enum, GuestHandle};
use super::DomId;

/// `SCHEDOP_yield`: give up the CPU, staying runnable.
pub const SCHEDOP_YIELD: u32 = 0;
/// `SCHEDOP_block`: sleep until an event is pending.
pub const SCHEDOP_BLOCK: u32 = 1;
/// `SCHEDOP_shutdown`: stop the calling domain ([`SchedShutdown`]).
pub const SCHEDOP_SHUTDOWN: u32 = 2;
/// `SCHEDOP_poll`: sleep until one of some ports is pending ([`SchedPoll`]).
pub const SCHEDOP_POLL: u32 = 3;
/// `SCHEDOP_remote_shutdown`: stop another domain ([`SchedRemoteShutdown`]).
pub const SCHEDOP_REMOTE_SHUTDOWN: u32 = 4;
/// `SCHEDOP_shutdown_code`: record a reason without shutting down yet.
pub const SCHEDOP_SHUTDOWN_CODE: u32 = 5;
/// `SCHEDOP_watchdog`: arm, kick or stop a domain watchdog ([`SchedWatchdog`]).
pub const SCHEDOP_WATCHDOG: u32 = 6;
/// `SCHEDOP_pin_override`: temporarily pin a vCPU (dom0 only).
pub const SCHEDOP_PIN_OVERRIDE: u32 = 7;

abi_enum! {
    /// A scheduler sub-operation (`cmd` of `__HYPERVISOR_sched_op`).
    pub enum SchedOp: u32, "scheduler operation" {
        /// Yield.
        Yield = SCHEDOP_YIELD => "SCHEDOP_yield",
        /// Block.
        Block = SCHEDOP_BLOCK => "SCHEDOP_block",
        /// Shut down the caller.
        Shutdown = SCHEDOP_SHUTDOWN => "SCHEDOP_shutdown",
        /// Poll ports.
        Poll = SCHEDOP_POLL => "SCHEDOP_poll",
        /// Shut down another domain.
        RemoteShutdown = SCHEDOP_REMOTE_SHUTDOWN => "SCHEDOP_remote_shutdown",
        /// Record a shutdown code.
        ShutdownCode = SCHEDOP_SHUTDOWN_CODE => "SCHEDOP_shutdown_code",
        /// Watchdog control.
        Watchdog = SCHEDOP_WATCHDOG => "SCHEDOP_watchdog",
        /// Pin override.
        PinOverride = SCHEDOP_PIN_OVERRIDE => "SCHEDOP_pin_override",
    }
}

/// `SHUTDOWN_poweroff`: the domain exited normally; destroy it.
pub const SHUTDOWN_POWEROFF: u32 = 0;
/// `SHUTDOWN_reboot`: destroy and restart the domain.
pub const SHUTDOWN_REBOOT: u32 = 1;
/// `SHUTDOWN_suspend`: the domain saved its state for save/migrate.
pub const SHUTDOWN_SUSPEND: u32 = 2;
/// `SHUTDOWN_crash`: the domain crashed.
pub const SHUTDOWN_CRASH: u32 = 3;
/// `SHUTDOWN_watchdog`: the domain's watchdog expired.
pub const SHUTDOWN_WATCHDOG: u32 = 4;
/// `SHUTDOWN_soft_reset`: the domain asks to be reset in place (kexec).
pub const SHUTDOWN_SOFT_RESET: u32 = 5;
/// `SHUTDOWN_MAX`: the largest valid reason.
pub const SHUTDOWN_MAX: u32 = 5;

abi_enum! {
    /// Why a domain shut down, as `xl` reports it and acts on
    /// (`on_poweroff`, `on_reboot`, `on_watchdog`, `on_crash`, `on_soft_reset`).
    pub enum ShutdownReason: u32, "shutdown reason" {
        /// Normal exit.
        Poweroff = SHUTDOWN_POWEROFF => "SHUTDOWN_poweroff",
        /// Reboot requested.
        Reboot = SHUTDOWN_REBOOT => "SHUTDOWN_reboot",
        /// Suspended for save or migration.
        Suspend = SHUTDOWN_SUSPEND => "SHUTDOWN_suspend",
        /// Crashed.
        Crash = SHUTDOWN_CRASH => "SHUTDOWN_crash",
        /// Watchdog expired.
        Watchdog = SHUTDOWN_WATCHDOG => "SHUTDOWN_watchdog",
        /// Soft reset requested.
        SoftReset = SHUTDOWN_SOFT_RESET => "SHUTDOWN_soft_reset",
    }
}

impl ShutdownReason {
    /// The lowercase word `xl` uses for this reason (`"poweroff"`, `"reboot"`,
    /// `"suspend"`, `"crash"`, `"watchdog"`, `"soft_reset"`).
    pub fn name(self) -> &'static str {
        let c_name = self.c_name();
        c_name.strip_prefix("SHUTDOWN_").unwrap_or(c_name)
    }
}

/// `SCHEDOP_shutdown` and `SCHEDOP_shutdown_code`.
#[doc(alias = "sched_shutdown")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SchedShutdown {
    /// `SHUTDOWN_*`, see [`ShutdownReason`].
    pub reason: u32,
}
const _: () = assert!(core::mem::size_of::<SchedShutdown>() == 4);
const _: () = assert!(core::mem::offset_of!(SchedShutdown, reason) == 0);

impl From<ShutdownReason> for SchedShutdown {
    fn from(reason: ShutdownReason) -> Self {
        Self {
            reason: reason.raw(),
        }
    }
}

/// `SCHEDOP_poll`: block until one of `ports` is pending or `timeout`.
#[doc(alias = "sched_poll")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SchedPoll {
    /// An array of `nr_ports` event channel ports.
    pub ports: GuestHandle,
    /// Number of ports.
    pub nr_ports: u32,
    /// Padding (implicit in C).
    pub _pad: [u8; 4],
    /// Absolute system time (ns) to give up at; 0 for none.
    pub timeout: u64,
}
const _: () = assert!(core::mem::size_of::<SchedPoll>() == 24);
const _: () = assert!(core::mem::offset_of!(SchedPoll, ports) == 0);
const _: () = assert!(core::mem::offset_of!(SchedPoll, nr_ports) == 8);
const _: () = assert!(core::mem::offset_of!(SchedPoll, timeout) == 16);

/// `SCHEDOP_remote_shutdown`: shut down `domain_id` (privileged).
#[doc(alias = "sched_remote_shutdown")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SchedRemoteShutdown {
    /// The domain to shut down.
    pub domain_id: DomId,
    /// Padding (implicit in C).
    pub _pad: [u8; 2],
    /// `SHUTDOWN_*`, see [`ShutdownReason`].
    pub reason: u32,
}
const _: () = assert!(core::mem::size_of::<SchedRemoteShutdown>() == 8);
const _: () = assert!(core::mem::offset_of!(SchedRemoteShutdown, domain_id) == 0);
const _: () = assert!(core::mem::offset_of!(SchedRemoteShutdown, reason) == 4);

impl SchedRemoteShutdown {
    /// Shut down `domain_id` for `reason`.
    pub const fn new(domain_id: DomId, reason: ShutdownReason) -> Self {
        Self {
            domain_id,
            _pad: [0; 2],
            reason: reason.raw(),
        }
    }
}

/// `SCHEDOP_watchdog`: with `id == 0`, allocate a watchdog; otherwise kick
/// watchdog `id`, or destroy it if `timeout == 0`.
#[doc(alias = "sched_watchdog")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct SchedWatchdog {
    /// The watchdog, or 0 to allocate one.
    pub id: u32,
    /// Seconds until the domain is shut down with `SHUTDOWN_watchdog`.
    pub timeout: u32,
}
const _: () = assert!(core::mem::size_of::<SchedWatchdog>() == 8);
const _: () = assert!(core::mem::offset_of!(SchedWatchdog, id) == 0);
const _: () = assert!(core::mem::offset_of!(SchedWatchdog, timeout) == 4);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::hypercall::UnknownValue;

    #[test]
    fn shutdown_reasons_round_trip_and_reject_unknown() {
        for &reason in ShutdownReason::ALL {
            assert_eq!(ShutdownReason::try_from(reason.raw()), Ok(reason));
            assert!(reason.raw() <= SHUTDOWN_MAX);
        }
        assert_eq!(
            ShutdownReason::try_from(SHUTDOWN_MAX + 1),
            Err(UnknownValue {
                kind: "shutdown reason",
                value: 6
            })
        );
    }

    #[test]
    fn shutdown_reason_names_match_xl() {
        assert_eq!(ShutdownReason::SoftReset.name(), "soft_reset");
        assert_eq!(ShutdownReason::Poweroff.name(), "poweroff");
    }
}
