//! Hypercalls and foreign mappings over `/dev/xen/privcmd` (what
//! `libxencall` and `libxenforeignmemory` do on Linux).
//!
//! Only a privileged domain (dom0, or one allowed by XSM) may do most of
//! this; the kernel passes Xen's refusal on as `EPERM`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hypercall_abi::platform::{SharedMemory, SharedMemoryError};
use hypercall_abi::xen::arch_x86::{MmuextOp, VcpuGuestContext};
use hypercall_abi::xen::domctl::{
    VcpuAffinityFlags, XenDomctl, XenDomctlCreatedomain, XenDomctlGetdomaininfo, XenDomctlGetvcpuinfo,
    XenDomctlVcpuaffinity, XenctlBitmap, XEN_DOMCTL_CREATEDOMAIN, XEN_DOMCTL_DESTROYDOMAIN, XEN_DOMCTL_GETDOMAININFO,
    XEN_DOMCTL_GETVCPUAFFINITY, XEN_DOMCTL_GETVCPUCONTEXT, XEN_DOMCTL_GETVCPUINFO, XEN_DOMCTL_HYPERCALL_INIT,
    XEN_DOMCTL_INTERFACE_VERSION, XEN_DOMCTL_MAX_MEM, XEN_DOMCTL_MAX_VCPUS, XEN_DOMCTL_PAUSEDOMAIN,
    XEN_DOMCTL_SETTIMEOFFSET, XEN_DOMCTL_SETVCPUAFFINITY, XEN_DOMCTL_SETVCPUCONTEXT,
    XEN_DOMCTL_SET_PAGING_MEMPOOL_SIZE, XEN_DOMCTL_UNPAUSEDOMAIN,
};
use hypercall_abi::xen::event_channel::{
    EvtchnAllocUnbound, EvtchnBinding, EvtchnStatus, EVTCHNOP_ALLOC_UNBOUND, EVTCHNOP_STATUS,
};
use hypercall_abi::xen::grant_table::{GnttabQuerySize, GNTST_OKAY, GNTTABOP_QUERY_SIZE};
use hypercall_abi::xen::hypercall::{
    XenPfn, HYPERVISOR_DOMCTL, HYPERVISOR_EVENT_CHANNEL_OP, HYPERVISOR_GRANT_TABLE_OP, HYPERVISOR_MEMORY_OP,
    HYPERVISOR_MMUEXT_OP, HYPERVISOR_SYSCTL,
};
use hypercall_abi::xen::memory::{
    E820Entry, XenForeignMemoryMap, XenMemoryDomain, XenMemoryReservation, XENMEM_CURRENT_RESERVATION,
    XENMEM_MAXIMUM_RAM_PAGE, XENMEM_POPULATE_PHYSMAP, XENMEM_SET_MEMORY_MAP,
};
use hypercall_abi::xen::sysctl::{
    XenSysctl, XenSysctlGetcpuinfo, XenSysctlGetdomaininfolist, XenSysctlPhysinfo, XenSysctlReadconsole,
    XenSysctlSchedId, GETDOMAININFO_RECORD_SIZE, XEN_SYSCTL_GETCPUINFO, XEN_SYSCTL_GETDOMAININFOLIST,
    XEN_SYSCTL_INTERFACE_VERSION, XEN_SYSCTL_PHYSINFO, XEN_SYSCTL_READCONSOLE, XEN_SYSCTL_SCHED_ID,
};
use hypercall_abi::xen::domctl::{
    XenDomctlHvmcontext, XEN_DOMCTL_GETHVMCONTEXT, XEN_DOMCTL_GETTSCINFO, XEN_DOMCTL_SETHVMCONTEXT,
    XEN_DOMCTL_SETTSCINFO,
};
use hypercall_abi::xen::hvm::{XenHvmParam, HVMOP_GET_PARAM, HVMOP_SET_PARAM};
use hypercall_abi::xen::hypercall::HYPERVISOR_HVM_OP;
use hypercall_abi::xen::{DomId, EvtchnPort, DOMID_FIRST_RESERVED, PAGE_SIZE};
use memmap2::{Advice, MmapOptions, MmapRaw};
use zerocopy::IntoBytes;

use crate::error::{open_device, OpenError};
use crate::mapping::DeviceMapping;
use crate::sys::privcmd as sys;
use crate::MAX_PAGES;

/// Why a privcmd operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PrivcmdError {
    /// The hypercall failed; the error is Xen's (`-errno`).
    #[error("hypercall {op} failed: {source}")]
    Hypercall {
        /// The operation, e.g. `"EVTCHNOP_status"`.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The operation succeeded but its status field reports a failure.
    #[error("{op} failed with status {status}")]
    Status {
        /// The operation.
        op: &'static str,
        /// The `GNTST_*` (or similar) status.
        status: i16,
    },
    /// No hypercall-safe memory could be set up.
    #[error("cannot allocate hypercall-safe memory (locked pages or /dev/xen/hypercall): {0}")]
    Buffer(#[source] io::Error),
    /// Xen returned a value this crate does not know.
    #[error("Xen returned an unexpected value: {0}")]
    Unexpected(String),
    /// The request is invalid before reaching Xen.
    #[error("invalid privcmd request: {0}")]
    Invalid(&'static str),
    /// Mapping another domain's memory failed as a whole.
    #[error("{op} failed: {source}")]
    Map {
        /// The operation.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Xen refused a domctl or sysctl with `EACCES`.
    #[error(
        "Xen refused {op} (EACCES): its {interface} interface is not version {version:#x}, the one of Xen 4.17 \
         that this toolstack speaks (run it on Xen 4.17), or an XSM/Flask policy denies the call"
    )]
    InterfaceVersion {
        /// The operation, e.g. `"XEN_DOMCTL_createdomain"`.
        op: &'static str,
        /// `"domctl"` or `"sysctl"`.
        interface: &'static str,
        /// The version this crate sent.
        version: u32,
    },
    /// The domain does not exist (`ESRCH`).
    #[error("{op} failed: there is no domain {dom}")]
    NoSuchDomain {
        /// The operation.
        op: &'static str,
        /// The domain asked for.
        dom: DomId,
    },
    /// A batched operation did only part of the work; Xen stops early when
    /// it runs out of memory or hits the domain's limit.
    #[error("{op} completed {done} of {requested} items: Xen ran out of free memory or the domain reached its maximum")]
    Incomplete {
        /// The operation.
        op: &'static str,
        /// Items done, from the start of the request.
        done: usize,
        /// Items asked for.
        requested: usize,
    },
    /// One page of a foreign mapping failed (the mapping is dropped).
    #[error("mapping frame {gfn:#x} (page {index}) of domain {dom} failed: {source}")]
    Page {
        /// The domain.
        dom: DomId,
        /// The page's index in the request.
        index: usize,
        /// Its frame number.
        gfn: u64,
        /// The error Xen gave for it.
        #[source]
        source: io::Error,
    },
}

impl PrivcmdError {
    /// The errno behind this error, if it came from the kernel or Xen.
    pub fn errno(&self) -> Option<i32> {
        match self {
            PrivcmdError::Hypercall { source, .. }
            | PrivcmdError::Buffer(source)
            | PrivcmdError::Map { source, .. }
            | PrivcmdError::Page { source, .. } => source.raw_os_error(),
            PrivcmdError::InterfaceVersion { .. } => Some(libc::EACCES),
            PrivcmdError::NoSuchDomain { .. } => Some(libc::ESRCH),
            PrivcmdError::Status { .. }
            | PrivcmdError::Unexpected(_)
            | PrivcmdError::Invalid(_)
            | PrivcmdError::Incomplete { .. } => None,
        }
    }

    /// Whether the domain asked about does not exist.
    pub fn is_no_such_domain(&self) -> bool {
        matches!(self, PrivcmdError::NoSuchDomain { .. })
    }
}

/// The error for a failed domctl `op` on `dom`: `EACCES` is an interface
/// version mismatch (or an XSM denial), `ESRCH` a missing domain.
fn domctl_error(op: &'static str, dom: DomId, source: io::Error) -> PrivcmdError {
    match source.raw_os_error() {
        Some(libc::EACCES) => {
            PrivcmdError::InterfaceVersion { op, interface: "domctl", version: XEN_DOMCTL_INTERFACE_VERSION }
        }
        Some(libc::ESRCH) => PrivcmdError::NoSuchDomain { op, dom },
        _ => PrivcmdError::Hypercall { op, source },
    }
}

/// The error for a failed sysctl `op`: `EACCES` is an interface version
/// mismatch (or an XSM denial).
fn sysctl_error(op: &'static str, source: io::Error) -> PrivcmdError {
    match source.raw_os_error() {
        Some(libc::EACCES) => {
            PrivcmdError::InterfaceVersion { op, interface: "sysctl", version: XEN_SYSCTL_INTERFACE_VERSION }
        }
        _ => PrivcmdError::Hypercall { op, source },
    }
}

/// The error for a failed memory operation `op` on `dom`.
fn memory_op_error(op: &'static str, dom: DomId, source: io::Error) -> PrivcmdError {
    match source.raw_os_error() {
        Some(libc::ESRCH) => PrivcmdError::NoSuchDomain { op, dom },
        _ => PrivcmdError::Hypercall { op, source },
    }
}

/// Whether domctl `cmd`'s payload is plain data, without guest handles:
/// Xen then reads and writes nothing but the `xen_domctl` itself.
const fn domctl_without_handles(cmd: u32) -> bool {
    matches!(
        cmd,
        XEN_DOMCTL_CREATEDOMAIN
            | XEN_DOMCTL_DESTROYDOMAIN
            | XEN_DOMCTL_PAUSEDOMAIN
            | XEN_DOMCTL_UNPAUSEDOMAIN
            | XEN_DOMCTL_GETDOMAININFO
            | XEN_DOMCTL_MAX_MEM
            | XEN_DOMCTL_GETVCPUINFO
            | XEN_DOMCTL_MAX_VCPUS
            | XEN_DOMCTL_HYPERCALL_INIT
            | XEN_DOMCTL_SETTIMEOFFSET
            | XEN_DOMCTL_SET_PAGING_MEMPOOL_SIZE
            | XEN_DOMCTL_SETTSCINFO
            | XEN_DOMCTL_GETTSCINFO
    )
}

/// The C name of domctl `cmd`, for messages.
fn domctl_name(cmd: u32) -> &'static str {
    match cmd {
        XEN_DOMCTL_CREATEDOMAIN => "XEN_DOMCTL_createdomain",
        XEN_DOMCTL_DESTROYDOMAIN => "XEN_DOMCTL_destroydomain",
        XEN_DOMCTL_PAUSEDOMAIN => "XEN_DOMCTL_pausedomain",
        XEN_DOMCTL_UNPAUSEDOMAIN => "XEN_DOMCTL_unpausedomain",
        XEN_DOMCTL_GETDOMAININFO => "XEN_DOMCTL_getdomaininfo",
        XEN_DOMCTL_SETVCPUAFFINITY => "XEN_DOMCTL_setvcpuaffinity",
        XEN_DOMCTL_MAX_MEM => "XEN_DOMCTL_max_mem",
        XEN_DOMCTL_SETVCPUCONTEXT => "XEN_DOMCTL_setvcpucontext",
        XEN_DOMCTL_GETVCPUCONTEXT => "XEN_DOMCTL_getvcpucontext",
        XEN_DOMCTL_GETVCPUINFO => "XEN_DOMCTL_getvcpuinfo",
        XEN_DOMCTL_MAX_VCPUS => "XEN_DOMCTL_max_vcpus",
        XEN_DOMCTL_HYPERCALL_INIT => "XEN_DOMCTL_hypercall_init",
        XEN_DOMCTL_SETTSCINFO => "XEN_DOMCTL_settscinfo",
        XEN_DOMCTL_GETTSCINFO => "XEN_DOMCTL_gettscinfo",
        XEN_DOMCTL_SETTIMEOFFSET => "XEN_DOMCTL_settimeoffset",
        XEN_DOMCTL_GETVCPUAFFINITY => "XEN_DOMCTL_getvcpuaffinity",
        XEN_DOMCTL_SET_PAGING_MEMPOOL_SIZE => "XEN_DOMCTL_set_paging_mempool_size",
        _ => "__HYPERVISOR_domctl",
    }
}

/// The C name of sysctl `cmd`, for messages.
fn sysctl_name(cmd: u32) -> &'static str {
    match cmd {
        XEN_SYSCTL_READCONSOLE => "XEN_SYSCTL_readconsole",
        XEN_SYSCTL_PHYSINFO => "XEN_SYSCTL_physinfo",
        XEN_SYSCTL_SCHED_ID => "XEN_SYSCTL_sched_id",
        XEN_SYSCTL_GETDOMAININFOLIST => "XEN_SYSCTL_getdomaininfolist",
        XEN_SYSCTL_GETCPUINFO => "XEN_SYSCTL_getcpuinfo",
        _ => "__HYPERVISOR_sysctl",
    }
}

/// Where the arrays a structured hypercall points to start in the
/// hypercall buffer: after the `xen_domctl` (144 bytes) or `xen_sysctl`
/// (136 bytes) at offset 0, 8-byte aligned.
const DATA_OFFSET: usize = 256;

/// Pages of hypercall buffer a bulk operation (domain list, console, page
/// population) uses per hypercall; larger requests are split.
const BULK_PAGES: usize = 8;

/// Bytes of array data a bulk operation moves per hypercall.
const BULK_BYTES: usize = BULK_PAGES * PAGE_SIZE - DATA_OFFSET;

const _: () = assert!(DATA_OFFSET >= std::mem::size_of::<XenDomctl>() && DATA_OFFSET % 8 == 0);
const _: () = assert!(DATA_OFFSET >= std::mem::size_of::<XenSysctl>());
const _: () = assert!(DATA_OFFSET >= std::mem::size_of::<XenMemoryReservation>());
const _: () = assert!(DATA_OFFSET >= std::mem::size_of::<XenForeignMemoryMap>());

/// Domain records per `XEN_SYSCTL_getdomaininfolist` call.
const DOMAIN_LIST_BATCH: usize = BULK_BYTES / GETDOMAININFO_RECORD_SIZE;

/// Extents per `XENMEM_populate_physmap` call.
const POPULATE_BATCH: usize = BULK_BYTES / std::mem::size_of::<XenPfn>();

// Each bulk request fits its buffer, and batches stay worth the round trip.
const _: () = assert!(DATA_OFFSET + DOMAIN_LIST_BATCH * GETDOMAININFO_RECORD_SIZE <= BULK_PAGES * PAGE_SIZE);
const _: () = assert!(DATA_OFFSET + POPULATE_BATCH * std::mem::size_of::<XenPfn>() <= BULK_PAGES * PAGE_SIZE);
const _: () = assert!(DOMAIN_LIST_BATCH >= 64 && POPULATE_BATCH >= 4000);

/// Most console bytes read by [`Privcmd::read_console_all`] (64 MiB; Xen's
/// ring is 16 KiB unless `conring_size` raises it).
const MAX_CONSOLE_BYTES: usize = 64 << 20;

/// Largest CPU bitmap, in bytes, [`Privcmd::vcpu_affinity`] handles
/// (32768 CPUs).
const MAX_CPUMAP_BYTES: usize = 4096;

/// How often, and how long apart, [`Privcmd::destroy_domain`] retries
/// while Xen answers `EAGAIN` (about ten seconds in all).
const DESTROY_RETRIES: u32 = 10_000;
const DESTROY_RETRY_DELAY: Duration = Duration::from_millis(1);

/// A piece of the hypervisor's console ring, from [`Privcmd::read_console`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsoleChunk {
    /// The bytes read (Xen's log lines, `\n`-separated; not necessarily
    /// UTF-8, and a line may be split across chunks).
    pub data: Vec<u8>,
    /// Where reading stopped: pass it back to continue.
    pub index: u32,
}

/// A vCPU's affinity masks, one bit per physical CPU (bit `n % 8` of byte
/// `n / 8` for CPU `n`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VcpuAffinity {
    /// Where the vCPU may run.
    pub hard: Vec<u8>,
    /// Where it prefers to run.
    pub soft: Vec<u8>,
}

/// The domain id to continue a domain listing from after `batch`, read
/// from `first` up, or `None` if the listing is complete (a short batch,
/// or the last domain is the highest possible id).
fn next_first_domain(
    first: DomId,
    batch: &[XenDomctlGetdomaininfo],
    asked: usize,
) -> Result<Option<DomId>, PrivcmdError> {
    let Some(last) = batch.last() else {
        return Ok(None);
    };
    if batch.iter().any(|d| d.domain < first) || batch.windows(2).any(|w| w[0].domain >= w[1].domain) {
        return Err(PrivcmdError::Unexpected(format!(
            "XEN_SYSCTL_getdomaininfolist from domain {first} returned domains out of order"
        )));
    }
    if batch.len() < asked {
        return Ok(None);
    }
    Ok(last.domain.checked_add(1).filter(|next| *next < DOMID_FIRST_RESERVED))
}

impl From<SharedMemoryError> for PrivcmdError {
    fn from(e: SharedMemoryError) -> Self {
        PrivcmdError::Unexpected(format!("hypercall buffer access: {e}"))
    }
}

/// Memory that Xen may read and write during a hypercall: pages of
/// `/dev/xen/hypercall` where the kernel has it, otherwise anonymous pages
/// locked in memory and not inherited by children (as `libxencall` does).
///
/// Ordinary memory may be paged out, or migrated by the kernel while Xen
/// copies to it.
#[derive(Debug)]
pub struct HypercallBuffer {
    map: DeviceMapping,
}

impl HypercallBuffer {
    /// The device providing hypercall-safe pages (Linux 4.18 and later).
    pub const DEVICE: &'static str = "/dev/xen/hypercall";

    /// Allocates `pages` pages.
    pub fn new(pages: usize) -> Result<Self, PrivcmdError> {
        if pages == 0 || pages > MAX_PAGES {
            return Err(PrivcmdError::Invalid("hypercall buffer size out of range"));
        }
        let len = pages * PAGE_SIZE;
        let map = match OpenOptions::new().read(true).write(true).open(Self::DEVICE) {
            // The mapping keeps the device open; the fd may go.
            Ok(dev) => DeviceMapping::new(&dev, 0, len, true).map_err(PrivcmdError::Buffer)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let anon = MmapOptions::new().len(len).map_anon().map_err(PrivcmdError::Buffer)?;
                anon.lock().map_err(PrivcmdError::Buffer)?;
                anon.advise(Advice::DontFork).map_err(PrivcmdError::Buffer)?;
                DeviceMapping::from_raw(MmapRaw::from(anon), true)
            }
            Err(e) => return Err(PrivcmdError::Buffer(e)),
        };
        Ok(Self { map })
    }

    /// The buffer's address, to pass to Xen.
    pub fn addr(&self) -> u64 {
        self.map.addr()
    }

    /// The volatile accessor for the buffer.
    pub fn memory(&self) -> SharedMemory<'_> {
        self.map.memory()
    }

    /// The buffer's size in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the buffer is empty (never: it has at least one page).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }
}

/// A handle on `/dev/xen/privcmd`: `xencall_handle` and
/// `xenforeignmemory_handle`.
#[derive(Debug)]
pub struct Privcmd {
    file: File,
    /// One page for the structured hypercalls, made on first use.
    buffer: Mutex<Option<HypercallBuffer>>,
}

impl Privcmd {
    /// The device.
    pub const PATH: &'static str = "/dev/xen/privcmd";

    /// Opens the device.
    pub fn open() -> Result<Self, OpenError> {
        Ok(Self { file: open_device(Self::PATH, "xen-privcmd", 0)?, buffer: Mutex::new(None) })
    }

    /// Issues hypercall `op` with `args` (`xencall5`) and returns Xen's
    /// non-negative result; a negative one is the error.
    ///
    /// # Safety
    /// `args` must be what hypercall `op` expects: Xen reads and writes the
    /// memory they point to, which must be valid for that, not accessed
    /// through Rust references meanwhile, and should be a
    /// [`HypercallBuffer`].
    pub unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> io::Result<i32> {
        // SAFETY: `file` is /dev/xen/privcmd, opened by `open`; the
        // arguments are the caller's contract.
        unsafe { sys::hypercall(self.file.as_fd(), u64::from(op), args) }
    }

    /// Runs `f` with the handle's one-page hypercall buffer, allocated on
    /// first use; calls are serialised by it.
    fn with_buffer<R>(&self, f: impl FnOnce(&HypercallBuffer) -> Result<R, PrivcmdError>) -> Result<R, PrivcmdError> {
        self.with_buffer_pages(1, f)
    }

    /// Runs `f` with the handle's hypercall buffer, grown to at least
    /// `pages` pages (it keeps its largest size); calls are serialised by it.
    fn with_buffer_pages<R>(
        &self,
        pages: usize,
        f: impl FnOnce(&HypercallBuffer) -> Result<R, PrivcmdError>,
    ) -> Result<R, PrivcmdError> {
        let mut guard: MutexGuard<'_, Option<HypercallBuffer>> = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let buffer = match &mut *guard {
            Some(buffer) if buffer.len() >= pages * PAGE_SIZE => buffer,
            slot => slot.insert(HypercallBuffer::new(pages)?),
        };
        f(buffer)
    }

    /// Writes `domctl` at the start of `buf`, issues it and returns the
    /// structure as Xen left it.
    ///
    /// # Safety
    /// Every guest handle in `domctl.u` must be null where the operation
    /// allows it, or point to hypercall-safe memory (normally further into
    /// `buf`) laid out as the operation expects and not otherwise accessed
    /// during the call.
    unsafe fn domctl_in(&self, buf: &HypercallBuffer, domctl: &XenDomctl) -> Result<XenDomctl, PrivcmdError> {
        let mem = buf.memory();
        mem.write_obj(0, domctl)?;
        let args = [buf.addr(), 0, 0, 0, 0];
        // SAFETY: __HYPERVISOR_domctl takes one `xen_domctl`, which Xen
        // reads and writes back in the hypercall buffer at `buf.addr()`;
        // the handles in its union are valid for the operation (caller).
        unsafe { self.hypercall(HYPERVISOR_DOMCTL, args) }
            .map_err(|source| domctl_error(domctl_name(domctl.cmd), domctl.domain, source))?;
        Ok(mem.read_obj(0)?)
    }

    /// Issues a domctl whose payload holds no guest handle (see
    /// [`domctl_without_handles`]), in the one-page buffer.
    fn plain_domctl(&self, domctl: &XenDomctl) -> Result<XenDomctl, PrivcmdError> {
        if !domctl_without_handles(domctl.cmd) {
            return Err(PrivcmdError::Invalid("this domctl points to memory and needs its own buffer layout"));
        }
        self.with_buffer(|buf| {
            // SAFETY: the operation's payload has no guest handle (checked
            // above), so Xen touches only the structure itself.
            unsafe { self.domctl_in(buf, domctl) }
        })
    }

    /// Writes `sysctl` at the start of `buf`, issues it and returns the
    /// structure as Xen left it.
    ///
    /// # Safety
    /// As [`Privcmd::domctl_in`], for the guest handles in `sysctl.u`.
    unsafe fn sysctl_in(&self, buf: &HypercallBuffer, sysctl: &XenSysctl) -> Result<XenSysctl, PrivcmdError> {
        let mem = buf.memory();
        mem.write_obj(0, sysctl)?;
        let args = [buf.addr(), 0, 0, 0, 0];
        // SAFETY: __HYPERVISOR_sysctl takes one `xen_sysctl`, which Xen
        // reads and writes back in the hypercall buffer at `buf.addr()`;
        // the handles in its union are valid for the operation (caller).
        unsafe { self.hypercall(HYPERVISOR_SYSCTL, args) }.map_err(|source| sysctl_error(sysctl_name(sysctl.cmd), source))?;
        Ok(mem.read_obj(0)?)
    }

    /// Issues domctl `domctl` as is and returns the structure as Xen wrote
    /// it back (`do_domctl` of libxc). Prefer the typed methods.
    ///
    /// # Safety
    /// Every guest handle in `domctl.u` must be null where the operation
    /// allows, or point to memory valid for what the operation does with
    /// it (Xen writes there), not accessed through Rust references during
    /// the call, and hypercall-safe (see [`HypercallBuffer`]).
    pub unsafe fn domctl(&self, domctl: &XenDomctl) -> Result<XenDomctl, PrivcmdError> {
        self.with_buffer(|buf| {
            // SAFETY: the handles are the caller's contract; `domctl_in`
            // only adds the structure itself, in `buf`.
            unsafe { self.domctl_in(buf, domctl) }
        })
    }

    /// Issues sysctl `sysctl` as is and returns the structure as Xen wrote
    /// it back (`do_sysctl` of libxc). Prefer the typed methods.
    ///
    /// # Safety
    /// As [`Privcmd::domctl`], for the guest handles in `sysctl.u`.
    pub unsafe fn sysctl(&self, sysctl: &XenSysctl) -> Result<XenSysctl, PrivcmdError> {
        self.with_buffer(|buf| {
            // SAFETY: the handles are the caller's contract; `sysctl_in`
            // only adds the structure itself, in `buf`.
            unsafe { self.sysctl_in(buf, sysctl) }
        })
    }

    /// Issues memory operation `cmd` with the argument the caller put at
    /// the start of `buf` (or a null one, if `with_arg` is false) and
    /// returns Xen's non-negative result.
    ///
    /// # Safety
    /// The argument at the start of `buf` must be what `cmd` expects, with
    /// its guest handles pointing into `buf`.
    unsafe fn memory_op_in(
        &self,
        buf: &HypercallBuffer,
        cmd: u32,
        with_arg: bool,
        op: &'static str,
        dom: DomId,
    ) -> Result<i32, PrivcmdError> {
        let args = [u64::from(cmd), if with_arg { buf.addr() } else { 0 }, 0, 0, 0];
        // SAFETY: __HYPERVISOR_memory_op takes the sub-operation and a
        // pointer to its argument, which is in the hypercall buffer with the
        // arrays it names (caller), or null for operations without one.
        unsafe { self.hypercall(HYPERVISOR_MEMORY_OP, args) }.map_err(|source| memory_op_error(op, dom, source))
    }

    /// What port `port` of domain `dom` is bound to (`EVTCHNOP_status`).
    pub fn evtchn_status(&self, dom: DomId, port: EvtchnPort) -> Result<EvtchnBinding, PrivcmdError> {
        self.with_buffer(|buf| {
            let mem = buf.memory();
            mem.write_obj(0, &EvtchnStatus::query(dom, port))?;
            let args = [u64::from(EVTCHNOP_STATUS), buf.addr(), 0, 0, 0];
            // SAFETY: EVTCHNOP_status takes one `evtchn_status`, which Xen
            // reads and writes in the hypercall buffer at `buf.addr()`.
            unsafe { self.hypercall(HYPERVISOR_EVENT_CHANNEL_OP, args) }
                .map_err(|source| PrivcmdError::Hypercall { op: "EVTCHNOP_status", source })?;
            let status: EvtchnStatus = mem.read_obj(0)?;
            status.binding().map_err(|e| PrivcmdError::Unexpected(e.to_string()))
        })
    }

    /// Allocates a port of domain `dom` that domain `remote` may bind to
    /// (`EVTCHNOP_alloc_unbound`): a domain builder's store and console
    /// channels, whose other ends the daemons bind.
    pub fn evtchn_alloc_unbound(&self, dom: DomId, remote: DomId) -> Result<EvtchnPort, PrivcmdError> {
        self.with_buffer(|buf| {
            let mem = buf.memory();
            let op = EvtchnAllocUnbound {
                dom,
                remote_dom: remote,
                port: 0,
            };
            mem.write_obj(0, &op)?;
            let args = [u64::from(EVTCHNOP_ALLOC_UNBOUND), buf.addr(), 0, 0, 0];
            // SAFETY: EVTCHNOP_alloc_unbound takes one `evtchn_alloc_unbound`,
            // which Xen reads and writes in the hypercall buffer at
            // `buf.addr()`.
            unsafe { self.hypercall(HYPERVISOR_EVENT_CHANNEL_OP, args) }
                .map_err(|source| PrivcmdError::Hypercall { op: "EVTCHNOP_alloc_unbound", source })?;
            let done: EvtchnAllocUnbound = mem.read_obj(0)?;
            Ok(done.port)
        })
    }

    /// Runs extended MMU operations on domain `dom`'s memory
    /// (`__HYPERVISOR_mmuext_op` with `foreigndom = dom`), e.g. pinning a
    /// PV guest's boot page tables ([`MmuextOp::pin`]).
    pub fn mmuext_op(&self, dom: DomId, ops: &[MmuextOp]) -> Result<(), PrivcmdError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.with_buffer(|buf| {
            let mem = buf.memory();
            let size = std::mem::size_of::<MmuextOp>();
            if std::mem::size_of_val(ops) > mem.len() {
                return Err(PrivcmdError::Unexpected(format!(
                    "{} MMU operations do not fit one hypercall page",
                    ops.len()
                )));
            }
            for (i, op) in ops.iter().enumerate() {
                mem.write_obj(i * size, op)?;
            }
            let args = [buf.addr(), ops.len() as u64, 0, u64::from(dom), 0];
            // SAFETY: __HYPERVISOR_mmuext_op takes an array of `count`
            // `mmuext_op` (in the hypercall buffer at `buf.addr()`, written
            // above), a null `pdone` and the foreign domain.
            unsafe { self.hypercall(HYPERVISOR_MMUEXT_OP, args) }
                .map_err(|source| PrivcmdError::Hypercall { op: "__HYPERVISOR_mmuext_op", source })?;
            Ok(())
        })
    }

    /// The size of domain `dom`'s grant table (`GNTTABOP_query_size`).
    pub fn gnttab_query_size(&self, dom: DomId) -> Result<GnttabQuerySize, PrivcmdError> {
        self.with_buffer(|buf| {
            let mem = buf.memory();
            mem.write_obj(0, &GnttabQuerySize { dom, ..Default::default() })?;
            let args = [u64::from(GNTTABOP_QUERY_SIZE), buf.addr(), 1, 0, 0];
            // SAFETY: GNTTABOP_query_size takes an array of `count` (1)
            // `gnttab_query_size`, which Xen reads and writes in the
            // hypercall buffer at `buf.addr()`.
            unsafe { self.hypercall(HYPERVISOR_GRANT_TABLE_OP, args) }
                .map_err(|source| PrivcmdError::Hypercall { op: "GNTTABOP_query_size", source })?;
            let reply: GnttabQuerySize = mem.read_obj(0)?;
            if reply.status != GNTST_OKAY {
                return Err(PrivcmdError::Status { op: "GNTTABOP_query_size", status: reply.status });
            }
            Ok(reply)
        })
    }

    /// The state of domain `dom` (`XEN_DOMCTL_getdomaininfo`, what
    /// `xc_domain_getinfo_single` does), or `None` if there is no such
    /// domain.
    ///
    /// Xen 4.17 answers for the first existing domain whose id is at least
    /// `dom` (4.18 fails with `ESRCH` instead), and refuses reserved ids
    /// such as `DOMID_SELF` with `EINVAL`: both mean `None` here, as a
    /// different domain in the reply or `ESRCH` do. Other failures (e.g.
    /// `EPERM` outside dom0, `EACCES` from a Xen whose domctl interface is
    /// not 4.17's) are errors.
    pub fn domain_info(&self, dom: DomId) -> Result<Option<XenDomctlGetdomaininfo>, PrivcmdError> {
        if dom >= DOMID_FIRST_RESERVED {
            return Ok(None);
        }
        self.with_buffer(|buf| {
            let mem = buf.memory();
            mem.write_obj(0, &XenDomctl::getdomaininfo(dom))?;
            let args = [buf.addr(), 0, 0, 0, 0];
            // SAFETY: __HYPERVISOR_domctl takes one `xen_domctl`, which Xen
            // reads and, for XEN_DOMCTL_getdomaininfo, writes back in the
            // hypercall buffer at `buf.addr()`.
            match unsafe { self.hypercall(HYPERVISOR_DOMCTL, args) } {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
                Err(source) => return Err(PrivcmdError::Hypercall { op: "XEN_DOMCTL_getdomaininfo", source }),
            }
            let reply: XenDomctl = mem.read_obj(0)?;
            Ok(domain_info_reply(dom, &reply))
        })
    }

    /// The host's CPUs, memory and capabilities (`XEN_SYSCTL_physinfo`,
    /// for `xl info`).
    pub fn physinfo(&self) -> Result<XenSysctlPhysinfo, PrivcmdError> {
        self.with_buffer(|buf| {
            // SAFETY: XEN_SYSCTL_physinfo's payload has no guest handle.
            let reply = unsafe { self.sysctl_in(buf, &XenSysctl::physinfo()) }?;
            Ok(reply.payload())
        })
    }

    /// The default CPU pool's scheduler (`XEN_SYSCTL_sched_id`, `xl info`'s
    /// `xen_scheduler`); see [`XenSysctlSchedId::scheduler`].
    pub fn sched_id(&self) -> Result<XenSysctlSchedId, PrivcmdError> {
        self.with_buffer(|buf| {
            // SAFETY: XEN_SYSCTL_sched_id's payload has no guest handle.
            let reply = unsafe { self.sysctl_in(buf, &XenSysctl::sched_id()) }?;
            Ok(reply.payload())
        })
    }

    /// Every domain's state, in id order (`XEN_SYSCTL_getdomaininfolist`,
    /// repeated until all are read: what `xl list` shows).
    pub fn list_domains(&self) -> Result<Vec<XenDomctlGetdomaininfo>, PrivcmdError> {
        let mut domains = Vec::new();
        let mut first: DomId = 0;
        // Ends: `first` grows strictly with each full batch and stops
        // below DOMID_FIRST_RESERVED (see `next_first_domain`).
        loop {
            let batch = self.domain_info_batch(first, DOMAIN_LIST_BATCH)?;
            let next = next_first_domain(first, &batch, DOMAIN_LIST_BATCH)?;
            domains.extend(batch);
            match next {
                Some(next) => first = next,
                None => return Ok(domains),
            }
        }
    }

    /// Up to `max` domains with ids from `first` up (one
    /// `XEN_SYSCTL_getdomaininfolist`).
    fn domain_info_batch(&self, first: DomId, max: usize) -> Result<Vec<XenDomctlGetdomaininfo>, PrivcmdError> {
        let max = max.min(DOMAIN_LIST_BATCH);
        self.with_buffer_pages(BULK_PAGES, |buf| {
            let mem = buf.memory();
            // Cannot truncate: max <= DOMAIN_LIST_BATCH, a few hundred.
            let sysctl = XenSysctl::getdomaininfolist(first, max as u32, buf.addr() + DATA_OFFSET as u64);
            // SAFETY: the handle points at DATA_OFFSET in `buf`, followed by
            // room for `max` records of `xen_domctl_getdomaininfo_t`
            // (DATA_OFFSET + max * 112 <= BULK_PAGES pages).
            let reply = unsafe { self.sysctl_in(buf, &sysctl) }?;
            let list: XenSysctlGetdomaininfolist = reply.payload();
            let count = list.num_domains as usize;
            if count > max {
                return Err(PrivcmdError::Unexpected(format!(
                    "XEN_SYSCTL_getdomaininfolist returned {count} domains for {max} slots"
                )));
            }
            (0..count).map(|i| Ok(mem.read_obj(DATA_OFFSET + i * GETDOMAININFO_RECORD_SIZE)?)).collect()
        })
    }

    /// Reads the next piece of the hypervisor's console ring
    /// (`XEN_SYSCTL_readconsole`), up to about 32 KiB: from `index` (as
    /// returned by the previous call) if given, else from the oldest byte
    /// kept; `clear` discards what was read (`xl dmesg -c`). An empty chunk
    /// means the ring is drained.
    pub fn read_console(&self, clear: bool, index: Option<u32>) -> Result<ConsoleChunk, PrivcmdError> {
        self.with_buffer_pages(BULK_PAGES, |buf| {
            let mem = buf.memory();
            // Cannot truncate: BULK_BYTES is 32 KiB less a header.
            let sysctl = XenSysctl::readconsole(clear, index, buf.addr() + DATA_OFFSET as u64, BULK_BYTES as u32);
            // SAFETY: the handle points at DATA_OFFSET in `buf`, followed by
            // the BULK_BYTES the request says Xen may write.
            let reply = unsafe { self.sysctl_in(buf, &sysctl) }?;
            let read: XenSysctlReadconsole = reply.payload();
            let count = read.count as usize;
            if count > BULK_BYTES {
                return Err(PrivcmdError::Unexpected(format!(
                    "XEN_SYSCTL_readconsole returned {count} bytes for a {BULK_BYTES}-byte buffer"
                )));
            }
            let mut data = vec![0; count];
            mem.read(DATA_OFFSET, &mut data)?;
            Ok(ConsoleChunk { data, index: read.index })
        })
    }

    /// The whole console ring (`xl dmesg`), read chunk by chunk with
    /// [`Privcmd::read_console`]; `clear` empties it (`xl dmesg -c`).
    /// Stops after 64 MiB should Xen log faster than it can be read.
    pub fn read_console_all(&self, clear: bool) -> Result<Vec<u8>, PrivcmdError> {
        let mut log = Vec::new();
        let mut index = None;
        // Ends: each round adds at least one byte, up to MAX_CONSOLE_BYTES.
        while log.len() < MAX_CONSOLE_BYTES {
            let chunk = self.read_console(clear, index)?;
            if chunk.data.is_empty() {
                break;
            }
            log.extend_from_slice(&chunk.data);
            index = Some(chunk.index);
        }
        Ok(log)
    }

    /// The time each of the first `max_cpus` physical CPUs spent idle, in
    /// nanoseconds (`XEN_SYSCTL_getcpuinfo`); shorter if fewer CPUs exist.
    pub fn cpu_idle_times(&self, max_cpus: u32) -> Result<Vec<u64>, PrivcmdError> {
        let max = max_cpus as usize;
        if max == 0 || max > BULK_BYTES / 8 {
            return Err(PrivcmdError::Invalid("number of CPUs to query out of range"));
        }
        self.with_buffer_pages(BULK_PAGES, |buf| {
            let mem = buf.memory();
            let sysctl = XenSysctl::getcpuinfo(max_cpus, buf.addr() + DATA_OFFSET as u64);
            // SAFETY: the handle points at DATA_OFFSET in `buf`, followed by
            // room for `max_cpus` 8-byte `xen_sysctl_cpuinfo_t` (checked).
            let reply = unsafe { self.sysctl_in(buf, &sysctl) }?;
            let info: XenSysctlGetcpuinfo = reply.payload();
            let count = info.nr_cpus as usize;
            if count > max {
                return Err(PrivcmdError::Unexpected(format!(
                    "XEN_SYSCTL_getcpuinfo returned {count} CPUs for {max} slots"
                )));
            }
            (0..count).map(|i| Ok(mem.read_obj(DATA_OFFSET + i * 8)?)).collect()
        })
    }

    /// Creates a paused, empty domain configured by `config`
    /// (`XEN_DOMCTL_createdomain`) and returns its id: `domid` if given
    /// (fails with `EEXIST` if taken), else one Xen picks.
    ///
    /// Building it then takes `XEN_DOMCTL_max_vcpus` ([`Privcmd::set_max_vcpus`])
    /// with the same count, memory, and a vCPU context.
    pub fn create_domain(&self, domid: Option<DomId>, config: &XenDomctlCreatedomain) -> Result<DomId, PrivcmdError> {
        if domid.is_some_and(|d| d == 0 || d >= DOMID_FIRST_RESERVED) {
            return Err(PrivcmdError::Invalid("a new domain's id must be between 1 and 0x7fef"));
        }
        let reply = self.plain_domctl(&XenDomctl::createdomain(domid.unwrap_or(0), config))?;
        if reply.domain == 0 || reply.domain >= DOMID_FIRST_RESERVED {
            return Err(PrivcmdError::Unexpected(format!(
                "XEN_DOMCTL_createdomain returned domain id {:#x}",
                reply.domain
            )));
        }
        Ok(reply.domain)
    }

    /// Destroys domain `dom` (`XEN_DOMCTL_destroydomain`), retrying for up
    /// to about ten seconds while Xen answers `EAGAIN` (still freeing it).
    pub fn destroy_domain(&self, dom: DomId) -> Result<(), PrivcmdError> {
        check_domid(dom)?;
        let mut tries = 0;
        loop {
            match self.plain_domctl(&XenDomctl::destroydomain(dom)) {
                Err(e) if e.errno() == Some(libc::EAGAIN) && tries < DESTROY_RETRIES => {
                    tries += 1;
                    std::thread::sleep(DESTROY_RETRY_DELAY);
                }
                result => return result.map(drop),
            }
        }
    }

    /// Pauses domain `dom` (`XEN_DOMCTL_pausedomain`, `xl pause`).
    pub fn pause_domain(&self, dom: DomId) -> Result<(), PrivcmdError> {
        check_domid(dom)?;
        self.plain_domctl(&XenDomctl::pausedomain(dom)).map(drop)
    }

    /// Unpauses domain `dom` (`XEN_DOMCTL_unpausedomain`, `xl unpause`;
    /// also what starts a newly built domain).
    pub fn unpause_domain(&self, dom: DomId) -> Result<(), PrivcmdError> {
        check_domid(dom)?;
        self.plain_domctl(&XenDomctl::unpausedomain(dom)).map(drop)
    }

    /// Limits domain `dom` to `max_memkb` KiB (`XEN_DOMCTL_max_mem`,
    /// `xl mem-max`).
    pub fn set_max_mem(&self, dom: DomId, max_memkb: u64) -> Result<(), PrivcmdError> {
        check_domid(dom)?;
        self.plain_domctl(&XenDomctl::max_mem(dom, max_memkb)).map(drop)
    }

    /// Allocates `max` vCPUs for domain `dom` (`XEN_DOMCTL_max_vcpus`);
    /// `max` must equal the `max_vcpus` it was created with.
    pub fn set_max_vcpus(&self, dom: DomId, max: u32) -> Result<(), PrivcmdError> {
        check_domid(dom)?;
        self.plain_domctl(&XenDomctl::max_vcpus(dom, max)).map(drop)
    }

    /// The run state of `vcpu` of domain `dom` (`XEN_DOMCTL_getvcpuinfo`,
    /// `xl vcpu-list`). A vCPU that does not exist fails with `ENOENT`
    /// (or `EINVAL` beyond `max_vcpus`).
    pub fn vcpu_info(&self, dom: DomId, vcpu: u32) -> Result<XenDomctlGetvcpuinfo, PrivcmdError> {
        check_domid(dom)?;
        Ok(self.plain_domctl(&XenDomctl::getvcpuinfo(dom, vcpu))?.payload())
    }

    /// Loads `ctxt` into `vcpu` of PV domain `dom`
    /// (`XEN_DOMCTL_setvcpucontext`): how a builder sets the boot vCPU's
    /// entry point, stack, page tables and callbacks before unpausing.
    pub fn set_vcpu_context(&self, dom: DomId, vcpu: u32, ctxt: &VcpuGuestContext) -> Result<(), PrivcmdError> {
        check_domid(dom)?;
        let pages = (DATA_OFFSET + std::mem::size_of::<VcpuGuestContext>()).div_ceil(PAGE_SIZE);
        self.with_buffer_pages(pages, |buf| {
            buf.memory().write_obj(DATA_OFFSET, ctxt)?;
            let domctl = XenDomctl::setvcpucontext(dom, vcpu, buf.addr() + DATA_OFFSET as u64);
            // SAFETY: the handle points at the `vcpu_guest_context_t` just
            // written at DATA_OFFSET in `buf`, which has room for it.
            unsafe { self.domctl_in(buf, &domctl) }.map(drop)
        })
    }

    /// The register state of `vcpu` of domain `dom`
    /// (`XEN_DOMCTL_getvcpucontext`; the domain should be paused).
    pub fn vcpu_context(&self, dom: DomId, vcpu: u32) -> Result<VcpuGuestContext, PrivcmdError> {
        check_domid(dom)?;
        let pages = (DATA_OFFSET + std::mem::size_of::<VcpuGuestContext>()).div_ceil(PAGE_SIZE);
        self.with_buffer_pages(pages, |buf| {
            let domctl = XenDomctl::getvcpucontext(dom, vcpu, buf.addr() + DATA_OFFSET as u64);
            // SAFETY: the handle points at DATA_OFFSET in `buf`, which has
            // room for the `vcpu_guest_context_t` Xen writes there.
            unsafe { self.domctl_in(buf, &domctl) }?;
            Ok(buf.memory().read_obj(DATA_OFFSET)?)
        })
    }

    /// Has Xen fill frame `gmfn` of PV domain `dom` with its hypercall
    /// stubs (`XEN_DOMCTL_hypercall_init`), for a kernel whose ELF notes
    /// ask for a hypercall page.
    pub fn hypercall_init(&self, dom: DomId, gmfn: u64) -> Result<(), PrivcmdError> {
        check_domid(dom)?;
        self.plain_domctl(&XenDomctl::hypercall_init(dom, gmfn)).map(drop)
    }

    /// Puts domain `dom` in TSC mode `tsc_mode` (`XEN_TSC_MODE_*`,
    /// `XEN_DOMCTL_settscinfo`, `tsc_mode` in `xl.cfg`), keeping the
    /// host's TSC frequency.
    pub fn set_tsc_mode(&self, dom: DomId, tsc_mode: u32) -> Result<(), PrivcmdError> {
        check_domid(dom)?;
        self.plain_domctl(&XenDomctl::settscinfo(dom, tsc_mode)).map(drop)
    }

    /// Shifts domain `dom`'s wallclock by `seconds`
    /// (`XEN_DOMCTL_settimeoffset`, `rtc_timeoffset` in `xl.cfg`).
    pub fn set_time_offset(&self, dom: DomId, seconds: i64) -> Result<(), PrivcmdError> {
        check_domid(dom)?;
        self.plain_domctl(&XenDomctl::settimeoffset(dom, seconds)).map(drop)
    }

    /// Gives HVM/PVH domain `dom` `bytes` of memory for its HAP or shadow
    /// page tables (`XEN_DOMCTL_set_paging_mempool_size`; `shadow_memory`
    /// in `xl.cfg`).
    pub fn set_paging_mempool_size(&self, dom: DomId, bytes: u64) -> Result<(), PrivcmdError> {
        check_domid(dom)?;
        self.plain_domctl(&XenDomctl::set_paging_mempool_size(dom, bytes)).map(drop)
    }

    /// The hard and soft affinity of `vcpu` of domain `dom`, as maps of
    /// `nr_cpus` CPUs (`XEN_DOMCTL_getvcpuaffinity`; `nr_cpus` is usually
    /// [`XenSysctlPhysinfo::max_cpu_id`] + 1).
    pub fn vcpu_affinity(&self, dom: DomId, vcpu: u32, nr_cpus: u32) -> Result<VcpuAffinity, PrivcmdError> {
        let len = (nr_cpus as usize).div_ceil(8);
        let empty = vec![0; len];
        self.vcpu_affinity_op(dom, vcpu, VcpuAffinityFlags::HARD | VcpuAffinityFlags::SOFT, &empty, &empty, false)
    }

    /// Pins `vcpu` of domain `dom` (`XEN_DOMCTL_setvcpuaffinity`,
    /// `xl vcpu-pin`): sets the hard and/or soft map, whichever is given,
    /// and returns the effective affinity Xen applied (the maps
    /// intersected with the CPU pool's online CPUs).
    pub fn set_vcpu_affinity(
        &self,
        dom: DomId,
        vcpu: u32,
        hard: Option<&[u8]>,
        soft: Option<&[u8]>,
    ) -> Result<VcpuAffinity, PrivcmdError> {
        let mut flags = VcpuAffinityFlags::empty();
        flags.set(VcpuAffinityFlags::HARD, hard.is_some());
        flags.set(VcpuAffinityFlags::SOFT, soft.is_some());
        if flags.is_empty() {
            return Err(PrivcmdError::Invalid("set_vcpu_affinity needs a hard or a soft map"));
        }
        self.vcpu_affinity_op(dom, vcpu, flags, hard.unwrap_or(&[]), soft.unwrap_or(&[]), true)
    }

    /// `XEN_DOMCTL_{set,get}vcpuaffinity` with the two maps laid out after
    /// the domctl in the buffer.
    fn vcpu_affinity_op(
        &self,
        dom: DomId,
        vcpu: u32,
        flags: VcpuAffinityFlags,
        hard: &[u8],
        soft: &[u8],
        set: bool,
    ) -> Result<VcpuAffinity, PrivcmdError> {
        check_domid(dom)?;
        if hard.len() > MAX_CPUMAP_BYTES || soft.len() > MAX_CPUMAP_BYTES {
            return Err(PrivcmdError::Invalid("CPU map larger than 32768 CPUs"));
        }
        let hard_offset = DATA_OFFSET;
        let soft_offset = hard_offset + hard.len().next_multiple_of(8);
        let pages = (soft_offset + soft.len()).div_ceil(PAGE_SIZE);
        self.with_buffer_pages(pages, |buf| {
            let mem = buf.memory();
            mem.write(hard_offset, hard)?;
            mem.write(soft_offset, soft)?;
            let bitmap = |offset: usize, map: &[u8]| XenctlBitmap {
                bitmap: buf.addr() + offset as u64,
                // Cannot truncate: map.len() <= MAX_CPUMAP_BYTES.
                nr_bits: (map.len() * 8) as u32,
                _pad: 0,
            };
            let arg = XenDomctlVcpuaffinity {
                vcpu,
                flags: flags.bits(),
                cpumap_hard: bitmap(hard_offset, hard),
                cpumap_soft: bitmap(soft_offset, soft),
            };
            let cmd = if set { XEN_DOMCTL_SETVCPUAFFINITY } else { XEN_DOMCTL_GETVCPUAFFINITY };
            // SAFETY: both bitmap handles point into `buf`, at
            // `nr_bits / 8` bytes each, which Xen reads or writes.
            unsafe { self.domctl_in(buf, &XenDomctl::with_payload(cmd, dom, &arg)) }?;
            let mut affinity = VcpuAffinity { hard: vec![0; hard.len()], soft: vec![0; soft.len()] };
            mem.read(hard_offset, &mut affinity.hard)?;
            mem.read(soft_offset, &mut affinity.soft)?;
            Ok(affinity)
        })
    }

    /// Backs frames of domain `dom` with memory (`XENMEM_populate_physmap`,
    /// what `xc_domain_populate_physmap_exact` does): one extent of
    /// `2^extent_order` pages at each guest frame in `extents`, with
    /// `XENMEMF_*` `mem_flags`.
    ///
    /// For a PV domain Xen replaces each entry with the machine frame it
    /// allocated (the builder's p2m); entries it completed are updated even
    /// when it stops early, which is [`PrivcmdError::Incomplete`].
    pub fn populate_physmap(
        &self,
        dom: DomId,
        extent_order: u32,
        mem_flags: u32,
        extents: &mut [XenPfn],
    ) -> Result<(), PrivcmdError> {
        check_domid(dom)?;
        let requested = extents.len();
        let mut done = 0;
        for chunk in extents.chunks_mut(POPULATE_BATCH) {
            let completed = self.with_buffer_pages(BULK_PAGES, |buf| {
                let mem = buf.memory();
                let reservation = XenMemoryReservation::new(
                    dom,
                    buf.addr() + DATA_OFFSET as u64,
                    chunk.len() as u64,
                    extent_order,
                    mem_flags,
                );
                mem.write_obj(0, &reservation)?;
                mem.write(DATA_OFFSET, chunk.as_bytes())?;
                // SAFETY: a `xen_memory_reservation` is at the start of
                // `buf`; its extent list points at DATA_OFFSET, where
                // `chunk.len()` frames (at most POPULATE_BATCH, so within
                // BULK_PAGES) were written.
                let ret = unsafe { self.memory_op_in(buf, XENMEM_POPULATE_PHYSMAP, true, "XENMEM_populate_physmap", dom) }?;
                let completed = usize::try_from(ret).unwrap_or(0).min(chunk.len());
                mem.read(DATA_OFFSET, chunk[..completed].as_mut_bytes())?;
                Ok(completed)
            })?;
            done += completed;
            if completed < chunk.len() {
                return Err(PrivcmdError::Incomplete { op: "XENMEM_populate_physmap", done, requested });
            }
        }
        Ok(())
    }

    /// Sets the e820 memory map PVH domain `dom` will read
    /// (`XENMEM_set_memory_map`).
    pub fn set_memory_map(&self, dom: DomId, map: &[E820Entry]) -> Result<(), PrivcmdError> {
        check_domid(dom)?;
        let bytes = map.as_bytes();
        if map.is_empty() || bytes.len() > BULK_BYTES {
            return Err(PrivcmdError::Invalid("e820 map empty or too large"));
        }
        let pages = (DATA_OFFSET + bytes.len()).div_ceil(PAGE_SIZE);
        self.with_buffer_pages(pages, |buf| {
            let mem = buf.memory();
            // Cannot truncate: map.len() * 20 <= BULK_BYTES.
            let arg = XenForeignMemoryMap::new(dom, buf.addr() + DATA_OFFSET as u64, map.len() as u32);
            mem.write_obj(0, &arg)?;
            mem.write(DATA_OFFSET, bytes)?;
            // SAFETY: a `xen_foreign_memory_map` is at the start of `buf`;
            // its buffer points at the `map.len()` e820 entries written at
            // DATA_OFFSET.
            unsafe { self.memory_op_in(buf, XENMEM_SET_MEMORY_MAP, true, "XENMEM_set_memory_map", dom) }.map(drop)
        })
    }

    /// The pages domain `dom` holds (`XENMEM_current_reservation`).
    pub fn current_reservation(&self, dom: DomId) -> Result<u64, PrivcmdError> {
        self.with_buffer(|buf| {
            buf.memory().write_obj(0, &XenMemoryDomain { domid: dom })?;
            // SAFETY: a `xen_memory_domain` (no handles) is at the start of
            // `buf`.
            let pages = unsafe { self.memory_op_in(buf, XENMEM_CURRENT_RESERVATION, true, "XENMEM_current_reservation", dom) }?;
            u64::try_from(pages).map_err(|_| PrivcmdError::Unexpected(format!("negative reservation {pages}")))
        })
    }

    /// The highest machine frame with RAM (`XENMEM_maximum_ram_page`).
    pub fn maximum_ram_page(&self) -> Result<u64, PrivcmdError> {
        self.with_buffer(|buf| {
            // SAFETY: XENMEM_maximum_ram_page takes no argument (null).
            let page = unsafe { self.memory_op_in(buf, XENMEM_MAXIMUM_RAM_PAGE, false, "XENMEM_maximum_ram_page", 0) }?;
            u64::try_from(page).map_err(|_| PrivcmdError::Unexpected(format!("negative maximum RAM page {page}")))
        })
    }

    /// Limits this handle to operations on `domid` from now on
    /// (`xencall`'s restrict, for a deprivileged device model).
    pub fn restrict(&self, domid: DomId) -> Result<(), PrivcmdError> {
        // SAFETY: `file` is /dev/xen/privcmd, opened by `open`.
        unsafe { sys::restrict(self.file.as_fd(), domid) }
            .map_err(|source| PrivcmdError::Hypercall { op: "IOCTL_PRIVCMD_RESTRICT", source })
    }

    /// Maps frames `gfns` of domain `dom`, one page each, contiguously
    /// (`xenforeignmemory_map`). Fails if any page fails.
    pub fn map_foreign(&self, dom: DomId, gfns: &[u64], writable: bool) -> Result<ForeignMapping, PrivcmdError> {
        if gfns.is_empty() || gfns.len() > MAX_PAGES {
            return Err(PrivcmdError::Invalid("number of frames to map out of range"));
        }
        let map = DeviceMapping::new(&self.file, 0, gfns.len() * PAGE_SIZE, writable)
            .map_err(|source| PrivcmdError::Map { op: "mmap of privcmd", source })?;
        let mut errs = vec![0; gfns.len()];
        // SAFETY: `file` is /dev/xen/privcmd, opened by `open`; `map` is a
        // fresh mapping of it of `gfns.len()` pages, not yet populated and
        // not referenced.
        let result = unsafe { sys::mmapbatch_v2(self.file.as_fd(), dom, map.addr(), gfns, &mut errs) };
        if let Some((index, &err)) = errs.iter().enumerate().find(|(_, &e)| e != 0) {
            let source = io::Error::from_raw_os_error(err.saturating_neg());
            return Err(PrivcmdError::Page { dom, index, gfn: gfns[index], source });
        }
        result.map_err(|source| PrivcmdError::Map { op: "IOCTL_PRIVCMD_MMAPBATCH_V2", source })?;
        Ok(ForeignMapping { map })
    }

    /// The size, in frames, of resource `type_`/`id` of domain `dom`
    /// (`xenforeignmemory_resource_size`).
    pub fn resource_size(&self, dom: DomId, type_: u32, id: u32) -> Result<u64, PrivcmdError> {
        // SAFETY: `file` is /dev/xen/privcmd, opened by `open`; addr 0
        // and num 0 only query.
        unsafe { sys::mmap_resource(self.file.as_fd(), dom, type_, id, 0, 0, 0) }
            .map_err(|source| PrivcmdError::Map { op: "IOCTL_PRIVCMD_MMAP_RESOURCE", source })
    }

    /// Maps `frames` frames of resource `type_`/`id` of domain `dom` from
    /// frame `idx` (`xenforeignmemory_map_resource`), e.g. a grant table or
    /// an ioreq server's pages.
    pub fn map_resource(
        &self,
        dom: DomId,
        type_: u32,
        id: u32,
        idx: u32,
        frames: usize,
        writable: bool,
    ) -> Result<ForeignMapping, PrivcmdError> {
        if frames == 0 || frames > MAX_PAGES {
            return Err(PrivcmdError::Invalid("number of frames to map out of range"));
        }
        let map = DeviceMapping::new(&self.file, 0, frames * PAGE_SIZE, writable)
            .map_err(|source| PrivcmdError::Map { op: "mmap of privcmd", source })?;
        // SAFETY: `file` is /dev/xen/privcmd, opened by `open`; `map` is a
        // fresh mapping of it of `frames` pages, not yet populated.
        unsafe { sys::mmap_resource(self.file.as_fd(), dom, type_, id, idx, frames as u64, map.addr()) }
            .map_err(|source| PrivcmdError::Map { op: "IOCTL_PRIVCMD_MMAP_RESOURCE", source })?;
        Ok(ForeignMapping { map })
    }
}

/// Largest HVM context [`Privcmd::hvm_context`] accepts (16 MiB; a domain
/// with 128 vCPUs saves well under 2 MiB).
const MAX_HVM_CONTEXT: usize = 16 << 20;

/// HVM and PVH domains: their parameters (`__HYPERVISOR_hvm_op`) and saved
/// state (`XEN_DOMCTL_{get,set}hvmcontext`), what libxenguest uses to build
/// them.
impl Privcmd {
    /// Writes `domctl` at the start of `buf`, issues it and returns the
    /// structure as Xen left it; failures are reported as operation `op`.
    ///
    /// # Safety
    /// As [`Privcmd::domctl_in`].
    unsafe fn domctl_named(
        &self,
        buf: &HypercallBuffer,
        domctl: &XenDomctl,
        op: &'static str,
    ) -> Result<XenDomctl, PrivcmdError> {
        let mem = buf.memory();
        mem.write_obj(0, domctl)?;
        let args = [buf.addr(), 0, 0, 0, 0];
        // SAFETY: __HYPERVISOR_domctl takes one `xen_domctl`, which Xen
        // reads and writes back in the hypercall buffer at `buf.addr()`;
        // the handles in its union are valid for the operation (caller).
        unsafe { self.hypercall(HYPERVISOR_DOMCTL, args) }.map_err(|source| domctl_error(op, domctl.domain, source))?;
        Ok(mem.read_obj(0)?)
    }

    /// Issues `HVMOP_set_param` or `HVMOP_get_param` for parameter `index`
    /// of domain `dom` and returns the parameter's value as Xen left it.
    fn hvm_param_op(&self, cmd: u32, dom: DomId, index: u32, value: u64) -> Result<u64, PrivcmdError> {
        check_domid(dom)?;
        let op = if cmd == HVMOP_SET_PARAM { "HVMOP_set_param" } else { "HVMOP_get_param" };
        self.with_buffer(|buf| {
            let mem = buf.memory();
            mem.write_obj(0, &XenHvmParam { domid: dom, pad: 0, index, value })?;
            let args = [u64::from(cmd), buf.addr(), 0, 0, 0];
            // SAFETY: HVMOP_{set,get}_param take one `xen_hvm_param`, which
            // Xen reads and (for get) writes in the hypercall buffer at
            // `buf.addr()`.
            unsafe { self.hypercall(HYPERVISOR_HVM_OP, args) }.map_err(|source| match source.raw_os_error() {
                Some(libc::ESRCH) => PrivcmdError::NoSuchDomain { op, dom },
                _ => PrivcmdError::Hypercall { op, source },
            })?;
            let reply: XenHvmParam = mem.read_obj(0)?;
            Ok(reply.value)
        })
    }

    /// Sets parameter `index` (`HVM_PARAM_*`) of HVM or PVH domain `dom`
    /// to `value` (`HVMOP_set_param`, `xc_hvm_param_set`).
    pub fn set_hvm_param(&self, dom: DomId, index: u32, value: u64) -> Result<(), PrivcmdError> {
        self.hvm_param_op(HVMOP_SET_PARAM, dom, index, value).map(drop)
    }

    /// Parameter `index` (`HVM_PARAM_*`) of HVM or PVH domain `dom`
    /// (`HVMOP_get_param`, `xc_hvm_param_get`).
    pub fn hvm_param(&self, dom: DomId, index: u32) -> Result<u64, PrivcmdError> {
        self.hvm_param_op(HVMOP_GET_PARAM, dom, index, 0)
    }

    /// The saved state of HVM or PVH domain `dom` as HVM save records
    /// (`XEN_DOMCTL_gethvmcontext`, what `xc_domain_hvm_getcontext` does
    /// twice: once for the size, once for the records). Xen pauses the
    /// domain while it saves.
    pub fn hvm_context(&self, dom: DomId) -> Result<Vec<u8>, PrivcmdError> {
        const OP: &str = "XEN_DOMCTL_gethvmcontext";
        check_domid(dom)?;
        let query = XenDomctlHvmcontext { size: 0, _pad: 0, buffer: 0 };
        let size = self.with_buffer(|buf| {
            let domctl = XenDomctl::with_payload(XEN_DOMCTL_GETHVMCONTEXT, dom, &query);
            // SAFETY: the buffer handle is null, which asks Xen for the
            // size only; Xen touches nothing but the domctl.
            let reply = unsafe { self.domctl_named(buf, &domctl, OP) }?;
            Ok(reply.payload::<XenDomctlHvmcontext>().size as usize)
        })?;
        if size == 0 || size > MAX_HVM_CONTEXT {
            return Err(PrivcmdError::Unexpected(format!("{OP} asks for a buffer of {size} bytes")));
        }
        let pages = (DATA_OFFSET + size).div_ceil(PAGE_SIZE);
        self.with_buffer_pages(pages, |buf| {
            // Cannot truncate: size <= MAX_HVM_CONTEXT.
            let arg = XenDomctlHvmcontext { size: size as u32, _pad: 0, buffer: buf.addr() + DATA_OFFSET as u64 };
            let domctl = XenDomctl::with_payload(XEN_DOMCTL_GETHVMCONTEXT, dom, &arg);
            // SAFETY: the handle points at DATA_OFFSET in `buf`, followed by
            // the `size` bytes (within `pages`) the request says Xen may
            // write.
            let reply = unsafe { self.domctl_named(buf, &domctl, OP) }?;
            let used = reply.payload::<XenDomctlHvmcontext>().size as usize;
            if used > size {
                return Err(PrivcmdError::Unexpected(format!("{OP} filled {used} bytes of a {size}-byte buffer")));
            }
            let mut records = vec![0; used];
            buf.memory().read(DATA_OFFSET, &mut records)?;
            Ok(records)
        })
    }

    /// Loads HVM save records `records` into HVM or PVH domain `dom`
    /// (`XEN_DOMCTL_sethvmcontext`, `xc_domain_hvm_setcontext`): they must
    /// start with the header record and end with the end record. Xen
    /// pauses the domain while it loads.
    pub fn set_hvm_context(&self, dom: DomId, records: &[u8]) -> Result<(), PrivcmdError> {
        check_domid(dom)?;
        if records.is_empty() || records.len() > MAX_HVM_CONTEXT {
            return Err(PrivcmdError::Invalid("HVM context empty or larger than 16 MiB"));
        }
        let pages = (DATA_OFFSET + records.len()).div_ceil(PAGE_SIZE);
        self.with_buffer_pages(pages, |buf| {
            buf.memory().write(DATA_OFFSET, records)?;
            // Cannot truncate: records.len() <= MAX_HVM_CONTEXT.
            let arg =
                XenDomctlHvmcontext { size: records.len() as u32, _pad: 0, buffer: buf.addr() + DATA_OFFSET as u64 };
            let domctl = XenDomctl::with_payload(XEN_DOMCTL_SETHVMCONTEXT, dom, &arg);
            // SAFETY: the handle points at the `records.len()` bytes just
            // written at DATA_OFFSET in `buf`, which Xen reads.
            unsafe { self.domctl_named(buf, &domctl, "XEN_DOMCTL_sethvmcontext") }.map(drop)
        })
    }
}

/// Refuses reserved domain ids (`DOMID_SELF` and above) for operations on
/// a particular domain, which Xen would apply to the caller or reject.
fn check_domid(dom: DomId) -> Result<(), PrivcmdError> {
    if dom >= DOMID_FIRST_RESERVED {
        return Err(PrivcmdError::Invalid("domain id is reserved (DOMID_SELF or above), not a domain"));
    }
    Ok(())
}

/// The information in a successful `XEN_DOMCTL_getdomaininfo` reply, if
/// it describes domain `dom` (Xen 4.17 describes the next one up when
/// `dom` does not exist).
fn domain_info_reply(dom: DomId, reply: &XenDomctl) -> Option<XenDomctlGetdomaininfo> {
    let info = reply.getdomaininfo_result();
    (info.domain == dom).then_some(info)
}

/// Another domain's memory mapped through [`Privcmd`]. Dropping it unmaps it.
#[derive(Debug)]
pub struct ForeignMapping {
    map: DeviceMapping,
}

impl ForeignMapping {
    /// The mapped pages, contiguous.
    pub fn memory(&self) -> SharedMemory<'_> {
        self.map.memory()
    }
}

#[cfg(test)]
mod tests {
    use zerocopy::IntoBytes;

    use super::*;

    #[test]
    fn open_without_xen_says_so() {
        if std::path::Path::new(Privcmd::PATH).exists() {
            return; // On a Xen host: nothing to check here.
        }

        let err = Privcmd::open().unwrap_err();

        assert!(matches!(err, OpenError::NotFound { path: "/dev/xen/privcmd", driver: "xen-privcmd" }), "{err:?}");
    }

    fn reply_for(domain: DomId) -> XenDomctl {
        let mut reply = XenDomctl::getdomaininfo(domain);
        let info = XenDomctlGetdomaininfo { domain, tot_pages: 256, ..Default::default() };
        reply.u.as_mut_bytes()[..std::mem::size_of::<XenDomctlGetdomaininfo>()].copy_from_slice(info.as_bytes());
        reply
    }

    #[test]
    fn domain_info_reply_for_the_asked_domain_is_kept() {
        let reply = reply_for(4);

        let info = domain_info_reply(4, &reply);

        assert_eq!(info.map(|i| (i.domain, i.tot_pages)), Some((4, 256)));
    }

    #[test]
    fn domain_info_reply_for_the_next_domain_up_means_none() {
        // Xen 4.17 asked for domain 3 when only 0 and 4 exist.
        let reply = reply_for(4);

        assert_eq!(domain_info_reply(3, &reply), None);
    }

    #[test]
    fn domain_info_of_a_reserved_id_is_none() {
        let Ok(privcmd) = Privcmd::open() else {
            return; // Needs only the handle, but that needs Xen.
        };

        assert!(matches!(privcmd.domain_info(DOMID_FIRST_RESERVED), Ok(None)));
        assert!(matches!(privcmd.domain_info(u16::MAX), Ok(None)));
    }

    fn errno(e: i32) -> io::Error {
        io::Error::from_raw_os_error(e)
    }

    #[test]
    fn domctl_eacces_says_the_interface_version_differs() {
        let err = domctl_error("XEN_DOMCTL_createdomain", 0, errno(libc::EACCES));

        assert!(matches!(err, PrivcmdError::InterfaceVersion { interface: "domctl", version: 0x15, .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("domctl interface is not version 0x15"), "{message}");
        assert!(message.contains("Xen 4.17"), "{message}");
        assert_eq!(err.errno(), Some(libc::EACCES));
    }

    #[test]
    fn sysctl_eacces_says_the_interface_version_differs() {
        let err = sysctl_error("XEN_SYSCTL_physinfo", errno(libc::EACCES));

        assert!(matches!(err, PrivcmdError::InterfaceVersion { interface: "sysctl", .. }), "{err:?}");
        assert!(err.to_string().contains("sysctl interface"), "{err}");
    }

    #[test]
    fn domctl_esrch_names_the_missing_domain() {
        let err = domctl_error("XEN_DOMCTL_pausedomain", 42, errno(libc::ESRCH));

        assert!(err.is_no_such_domain());
        assert_eq!(err.to_string(), "XEN_DOMCTL_pausedomain failed: there is no domain 42");
        assert_eq!(err.errno(), Some(libc::ESRCH));
    }

    #[test]
    fn other_hypercall_errors_keep_their_errno() {
        let domctl = domctl_error("XEN_DOMCTL_max_mem", 3, errno(libc::EINVAL));
        let memory = memory_op_error("XENMEM_populate_physmap", 3, errno(libc::ENOMEM));
        let sysctl = sysctl_error("XEN_SYSCTL_readconsole", errno(libc::EPERM));

        assert!(matches!(domctl, PrivcmdError::Hypercall { op: "XEN_DOMCTL_max_mem", .. }));
        assert_eq!(domctl.errno(), Some(libc::EINVAL));
        assert_eq!(memory.errno(), Some(libc::ENOMEM));
        assert_eq!(sysctl.errno(), Some(libc::EPERM));
        assert!(memory_op_error("XENMEM_set_memory_map", 9, errno(libc::ESRCH)).is_no_such_domain());
    }

    #[test]
    fn operation_names_are_the_c_names() {
        assert_eq!(domctl_name(XEN_DOMCTL_CREATEDOMAIN), "XEN_DOMCTL_createdomain");
        assert_eq!(domctl_name(XEN_DOMCTL_SETVCPUCONTEXT), "XEN_DOMCTL_setvcpucontext");
        assert_eq!(domctl_name(9999), "__HYPERVISOR_domctl");
        assert_eq!(sysctl_name(XEN_SYSCTL_GETDOMAININFOLIST), "XEN_SYSCTL_getdomaininfolist");
    }

    #[test]
    fn only_handle_free_domctls_take_the_plain_path() {
        assert!(domctl_without_handles(XEN_DOMCTL_PAUSEDOMAIN));
        assert!(domctl_without_handles(XEN_DOMCTL_CREATEDOMAIN));
        assert!(domctl_without_handles(XEN_DOMCTL_SETTSCINFO));
        assert!(!domctl_without_handles(XEN_DOMCTL_SETVCPUCONTEXT));
        assert!(!domctl_without_handles(XEN_DOMCTL_GETVCPUCONTEXT));
        assert!(!domctl_without_handles(XEN_DOMCTL_SETVCPUAFFINITY));
        assert!(!domctl_without_handles(XEN_DOMCTL_GETVCPUAFFINITY));
    }

    fn domains(ids: &[DomId]) -> Vec<XenDomctlGetdomaininfo> {
        ids.iter().map(|&domain| XenDomctlGetdomaininfo { domain, ..Default::default() }).collect()
    }

    #[test]
    fn a_full_domain_batch_continues_after_its_last_domain() {
        let batch = domains(&[0, 3, 7]);

        assert_eq!(next_first_domain(0, &batch, 3).unwrap(), Some(8));
    }

    #[test]
    fn a_short_or_empty_domain_batch_ends_the_listing() {
        assert_eq!(next_first_domain(0, &domains(&[0, 3]), 3).unwrap(), None);
        assert_eq!(next_first_domain(8, &[], 3).unwrap(), None);
    }

    #[test]
    fn a_domain_batch_ending_at_the_last_id_ends_the_listing() {
        let batch = domains(&[0x7fee, 0x7fef]);

        assert_eq!(next_first_domain(0x7fee, &batch, 2).unwrap(), None);
    }

    #[test]
    fn a_domain_batch_out_of_order_is_refused() {
        assert!(matches!(next_first_domain(5, &domains(&[4, 6]), 2), Err(PrivcmdError::Unexpected(_))));
        assert!(matches!(next_first_domain(0, &domains(&[6, 6]), 2), Err(PrivcmdError::Unexpected(_))));
    }

    #[test]
    fn reserved_domain_ids_are_refused() {
        assert!(check_domid(0).is_ok());
        assert!(check_domid(0x7fef).is_ok());
        assert!(matches!(check_domid(DOMID_FIRST_RESERVED), Err(PrivcmdError::Invalid(_))));
        assert!(matches!(check_domid(u16::MAX), Err(PrivcmdError::Invalid(_))));
    }

    #[test]
    fn incomplete_population_says_how_far_it_got() {
        let err = PrivcmdError::Incomplete { op: "XENMEM_populate_physmap", done: 10, requested: 12 };

        assert!(err.to_string().starts_with("XENMEM_populate_physmap completed 10 of 12"), "{err}");
        assert_eq!(err.errno(), None);
    }

    #[test]
    fn hvm_context_requests_put_size_and_buffer_at_the_c_offsets() {
        let arg = XenDomctlHvmcontext { size: 0x1234, _pad: 0, buffer: 0x7f00_0000_1100 };

        let domctl = XenDomctl::with_payload(XEN_DOMCTL_SETHVMCONTEXT, 6, &arg);
        let bytes = domctl.as_bytes();

        // xen_domctl: cmd at 0, domain at 8, union at 16; in the union
        // (xen_domctl_hvmcontext) size at 0 and buffer at 8.
        assert_eq!(&bytes[0..4], &34u32.to_le_bytes());
        assert_eq!(&bytes[8..10], &6u16.to_le_bytes());
        assert_eq!(&bytes[16..20], &0x1234u32.to_le_bytes());
        assert_eq!(&bytes[24..32], &0x7f00_0000_1100u64.to_le_bytes());
        assert_eq!(XEN_DOMCTL_GETHVMCONTEXT, 33);
    }

    #[test]
    fn hvm_operations_refuse_reserved_domains_and_bad_contexts_before_xen() {
        let Ok(privcmd) = Privcmd::open() else {
            return; // Needs only the handle, but that needs Xen.
        };

        assert!(matches!(privcmd.set_hvm_param(DOMID_FIRST_RESERVED, 1, 0), Err(PrivcmdError::Invalid(_))));
        assert!(matches!(privcmd.hvm_context(DOMID_FIRST_RESERVED), Err(PrivcmdError::Invalid(_))));
        assert!(matches!(privcmd.set_hvm_context(1, &[]), Err(PrivcmdError::Invalid(_))));
    }

    #[test]
    fn hypercall_buffer_is_usable_memory() {
        // Without /dev/xen/hypercall this takes the locked anonymous path,
        // which may exceed RLIMIT_MEMLOCK in a container: accept that error.
        match HypercallBuffer::new(1) {
            Ok(buf) => {
                let mem = buf.memory();
                assert_eq!(mem.len(), PAGE_SIZE);
                mem.write_obj(8, &0x1234_5678u32).unwrap();
                assert_eq!(mem.read_obj::<u32>(8).unwrap(), 0x1234_5678);
                assert_eq!(buf.addr() % PAGE_SIZE as u64, 0);
            }
            Err(PrivcmdError::Buffer(e)) => {
                assert!(matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOMEM | libc::EAGAIN)), "{e}")
            }
            Err(e) => panic!("{e}"),
        }
        assert!(matches!(HypercallBuffer::new(0), Err(PrivcmdError::Invalid(_))));
    }
}
