//! Hypercalls and foreign mappings over `/dev/xen/privcmd` (what
//! `libxencall` and `libxenforeignmemory` do on Linux).
//!
//! Only a privileged domain (dom0, or one allowed by XSM) may do most of
//! this; the kernel passes Xen's refusal on as `EPERM`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::sync::{Mutex, MutexGuard};

use hypercall_abi::platform::{SharedMemory, SharedMemoryError};
use hypercall_abi::xen::domctl::{XenDomctl, XenDomctlGetdomaininfo};
use hypercall_abi::xen::event_channel::{EvtchnBinding, EvtchnStatus, EVTCHNOP_STATUS};
use hypercall_abi::xen::grant_table::{GnttabQuerySize, GNTST_OKAY, GNTTABOP_QUERY_SIZE};
use hypercall_abi::xen::hypercall::{
    HYPERVISOR_DOMCTL, HYPERVISOR_EVENT_CHANNEL_OP, HYPERVISOR_GRANT_TABLE_OP,
};
use hypercall_abi::xen::{DomId, EvtchnPort, DOMID_FIRST_RESERVED, PAGE_SIZE};
use memmap2::{Advice, MmapOptions, MmapRaw};

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
        let mut guard: MutexGuard<'_, Option<HypercallBuffer>> = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let buffer = match &mut *guard {
            Some(buffer) => buffer,
            slot @ None => slot.insert(HypercallBuffer::new(1)?),
        };
        f(buffer)
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
