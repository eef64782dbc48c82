//! Consoles: the `CONSOLEIO_*` commands of `__HYPERVISOR_console_io`
//! (`xen/xen.h`), and the PV console ring page (`xen/io/console.h`).

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use super::hypercall::abi_enum;

/// `CONSOLEIO_write`: write bytes to Xen's console.
pub const CONSOLEIO_WRITE: u32 = 0;
/// `CONSOLEIO_read`: read bytes typed on Xen's console (dom0).
pub const CONSOLEIO_READ: u32 = 1;

abi_enum! {
    /// A command of `__HYPERVISOR_console_io`.
    pub enum ConsoleIoOp: u32, "console_io command" {
        /// Write.
        Write = CONSOLEIO_WRITE => "CONSOLEIO_write",
        /// Read.
        Read = CONSOLEIO_READ => "CONSOLEIO_read",
    }
}

/// A console ring index (`XENCONS_RING_IDX`): a free-running counter,
/// reduced modulo the ring size only to address a byte.
pub type XenconsRingIdx = u32;

/// Size of the `in` ring (backend to frontend, i.e. keyboard input).
pub const XENCONS_IN_SIZE: usize = 1024;
/// Size of the `out` ring (frontend to backend, i.e. guest output).
pub const XENCONS_OUT_SIZE: usize = 2048;

/// The PV console's shared page (`struct xencons_interface`).
///
/// The frontend produces into `out` and consumes from `in_`; the backend the
/// reverse. Indices only grow (wrapping at 2^32); the other side writes half
/// of them concurrently, so a live page must be accessed through the
/// platform's shared memory accessor, using the offsets of this struct.
#[doc(alias = "xencons_interface")]
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenconsInterface {
    /// Input ring (`in` in C).
    pub in_: [u8; XENCONS_IN_SIZE],
    /// Output ring.
    pub out: [u8; XENCONS_OUT_SIZE],
    /// Input consumer index (written by the frontend).
    pub in_cons: XenconsRingIdx,
    /// Input producer index (written by the backend).
    pub in_prod: XenconsRingIdx,
    /// Output consumer index (written by the backend).
    pub out_cons: XenconsRingIdx,
    /// Output producer index (written by the frontend).
    pub out_prod: XenconsRingIdx,
}
const _: () = assert!(core::mem::size_of::<XenconsInterface>() == 3088);
const _: () = assert!(core::mem::size_of::<XenconsInterface>() <= super::PAGE_SIZE);
const _: () = assert!(core::mem::offset_of!(XenconsInterface, in_) == 0);
const _: () = assert!(core::mem::offset_of!(XenconsInterface, out) == 1024);
const _: () = assert!(core::mem::offset_of!(XenconsInterface, in_cons) == 3072);
const _: () = assert!(core::mem::offset_of!(XenconsInterface, in_prod) == 3076);
const _: () = assert!(core::mem::offset_of!(XenconsInterface, out_cons) == 3080);
const _: () = assert!(core::mem::offset_of!(XenconsInterface, out_prod) == 3084);
const _: () = assert!(XENCONS_IN_SIZE.is_power_of_two() && XENCONS_OUT_SIZE.is_power_of_two());

impl Default for XenconsInterface {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl XenconsInterface {
    /// `MASK_XENCONS_IDX(idx, in)`: the byte of `in_` that index `idx` addresses.
    pub const fn mask_in(idx: XenconsRingIdx) -> usize {
        idx as usize & (XENCONS_IN_SIZE - 1)
    }

    /// `MASK_XENCONS_IDX(idx, out)`: the byte of `out` that index `idx` addresses.
    pub const fn mask_out(idx: XenconsRingIdx) -> usize {
        idx as usize & (XENCONS_OUT_SIZE - 1)
    }

    /// Bytes between a consumer and a producer index, or `None` if the
    /// producer claims more than `ring_size` bytes (a corrupt or hostile
    /// peer).
    pub const fn pending(
        cons: XenconsRingIdx,
        prod: XenconsRingIdx,
        ring_size: usize,
    ) -> Option<usize> {
        let used = prod.wrapping_sub(cons) as usize;
        if used <= ring_size {
            Some(used)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_wrap_at_ring_size() {
        assert_eq!(XenconsInterface::mask_in(1024 + 5), 5);
        assert_eq!(XenconsInterface::mask_out(2048 * 3 + 7), 7);
        assert_eq!(XenconsInterface::mask_out(u32::MAX), 2047);
    }

    #[test]
    fn pending_handles_index_wraparound_and_rejects_overrun() {
        assert_eq!(
            XenconsInterface::pending(u32::MAX - 1, 2, XENCONS_OUT_SIZE),
            Some(4)
        );
        assert_eq!(XenconsInterface::pending(0, 2049, XENCONS_OUT_SIZE), None);
    }
}
