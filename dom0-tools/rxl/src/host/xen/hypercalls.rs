//! The hypercalls rxl makes beyond [`Privcmd`]'s typed ones, each as
//! libxc makes it: `xen_version` (`xl info`), HVM parameters and the
//! populate-on-demand target, the topology and cpupool sysctls, and a few
//! handle-free domctls. The structures are the C headers' (Xen 4.17,
//! `xen/include/public/{version,hvm/hvm_op,memory,domctl,sysctl}.h`),
//! their layouts asserted below.
//!
//! Arrays Xen reads or writes live in a [`HypercallBuffer`] of their own;
//! the `xen_domctl`/`xen_sysctl` itself goes through [`Privcmd::domctl`]
//! and [`Privcmd::sysctl`], which place it in the handle's buffer.

use core::mem::{offset_of, size_of};
use std::io;

use hypercall_abi::xen::domctl::{
    XenDomctl, XenDomctlAddressSize, XenctlBitmap, XEN_DOMCTL_GET_ADDRESS_SIZE,
};
use hypercall_abi::xen::hypercall::{
    HYPERVISOR_HVM_OP, HYPERVISOR_MEMORY_OP, HYPERVISOR_XEN_VERSION,
};
use hypercall_abi::xen::memory::XENMEM_SET_POD_TARGET;
use hypercall_abi::xen::sysctl::{
    XenSysctl, XEN_SYSCTL_CPUPOOL_OP, XEN_SYSCTL_CPUTOPOINFO, XEN_SYSCTL_NUMAINFO,
    XEN_SYSCTL_PCITOPOINFO,
};
use hypercall_abi::xen::{DomId, PAGE_SIZE};
use xen_linux::{HypercallBuffer, Privcmd, PrivcmdError};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::host::{CpuMap, CpuTopology, HostError, NumaNode, Trigger, VersionInfo};

/// `XENVER_version`: `major << 16 | minor` as the result.
const XENVER_VERSION: u64 = 0;
/// `XENVER_extraversion`: `char[16]`.
const XENVER_EXTRAVERSION: u64 = 1;
/// `XENVER_compile_info`: `struct xen_compile_info`.
const XENVER_COMPILE_INFO: u64 = 2;
/// `XENVER_capabilities`: `char[1024]`.
const XENVER_CAPABILITIES: u64 = 3;
/// `XENVER_changeset`: `char[64]`.
const XENVER_CHANGESET: u64 = 4;
/// `XENVER_platform_parameters`: `struct xen_platform_parameters`.
const XENVER_PLATFORM_PARAMETERS: u64 = 5;
/// `XENVER_pagesize`: the page size as the result.
const XENVER_PAGESIZE: u64 = 7;
/// `XENVER_commandline`: `char[1024]`.
const XENVER_COMMANDLINE: u64 = 9;
/// `XENVER_build_id`: `struct xen_build_id`, the length as the result.
const XENVER_BUILD_ID: u64 = 10;

/// `HVMOP_get_param`.
const HVMOP_GET_PARAM: u64 = 1;
/// `HVM_PARAM_CALLBACK_IRQ`: how the guest's PV drivers get events (0:
/// none set up, so no PV drivers).
pub(crate) const HVM_PARAM_CALLBACK_IRQ: u32 = 0;

/// `XENMEM_get_sharing_freed_pages`.
const XENMEM_GET_SHARING_FREED_PAGES: u64 = 18;
/// `XENMEM_get_sharing_shared_pages`.
const XENMEM_GET_SHARING_SHARED_PAGES: u64 = 19;

/// `XEN_DOMCTL_sendtrigger`.
const XEN_DOMCTL_SENDTRIGGER: u32 = 28;
/// `XEN_DOMCTL_getnodeaffinity`.
const XEN_DOMCTL_GETNODEAFFINITY: u32 = 69;

/// `XEN_SYSCTL_CPUPOOL_OP_FREEINFO`.
const XEN_SYSCTL_CPUPOOL_OP_FREEINFO: u32 = 7;

/// `XEN_INVALID_CORE_ID`, `XEN_INVALID_SOCKET_ID`, `XEN_INVALID_NODE_ID`.
const XEN_INVALID_ID: u32 = !0;
/// `XEN_INVALID_DEV`: a PCI device Xen does not know.
const XEN_INVALID_DEV: u32 = XEN_INVALID_ID - 1;
/// `XEN_INVALID_MEM_SZ`: `~0U`, compared with 64-bit sizes as C does.
const XEN_INVALID_MEM_SZ: u64 = 0xffff_ffff;

/// Most CPUs, nodes or PCI devices asked about (sizes come from Xen and
/// sysfs; this bounds the buffers).
const MAX_ITEMS: u32 = 1 << 16;

/// `struct xen_compile_info`.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct CompileInfo {
    compiler: [u8; 64],
    compile_by: [u8; 16],
    compile_domain: [u8; 32],
    compile_date: [u8; 32],
}
const _: () = assert!(size_of::<CompileInfo>() == 144);

/// `struct xen_hvm_param`.
#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct HvmParam {
    domid: DomId,
    pad: u16,
    index: u32,
    value: u64,
}
const _: () = assert!(size_of::<HvmParam>() == 16 && offset_of!(HvmParam, value) == 8);

/// `struct xen_pod_target`.
#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct PodTarget {
    target_pages: u64,
    tot_pages: u64,
    pod_cache_pages: u64,
    pod_entries: u64,
    domid: DomId,
    pad: [u16; 3],
}
const _: () = assert!(size_of::<PodTarget>() == 40 && offset_of!(PodTarget, domid) == 32);

/// `struct xen_domctl_sendtrigger`.
#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct SendTrigger {
    trigger: u32,
    vcpu: u32,
}
const _: () = assert!(size_of::<SendTrigger>() == 8);

/// `struct xen_sysctl_cputopoinfo`.
#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct CputopoInfo {
    num_cpus: u32,
    pad: u32,
    cputopo: u64,
}
const _: () = assert!(size_of::<CputopoInfo>() == 16 && offset_of!(CputopoInfo, cputopo) == 8);

/// `struct xen_sysctl_cputopo`.
#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct Cputopo {
    core: u32,
    socket: u32,
    node: u32,
}
const _: () = assert!(size_of::<Cputopo>() == 12);

/// `struct xen_sysctl_numainfo`.
#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct NumaInfo {
    num_nodes: u32,
    pad: u32,
    meminfo: u64,
    distance: u64,
}
const _: () = assert!(size_of::<NumaInfo>() == 24 && offset_of!(NumaInfo, distance) == 16);

/// `struct xen_sysctl_meminfo`.
#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct MemInfo {
    memsize: u64,
    memfree: u64,
}
const _: () = assert!(size_of::<MemInfo>() == 16);

/// `struct xen_sysctl_pcitopoinfo`.
#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct PcitopoInfo {
    num_devs: u32,
    pad: u32,
    devs: u64,
    nodes: u64,
}
const _: () = assert!(size_of::<PcitopoInfo>() == 24 && offset_of!(PcitopoInfo, nodes) == 16);

/// `physdev_pci_device_t`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub(crate) struct PciDevice {
    /// Segment.
    pub seg: u16,
    /// Bus.
    pub bus: u8,
    /// Device and function.
    pub devfn: u8,
}
const _: () = assert!(size_of::<PciDevice>() == 4);

/// `struct xen_sysctl_cpupool_op`.
#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
struct CpupoolOp {
    op: u32,
    cpupool_id: u32,
    sched_id: u32,
    domid: u32,
    cpu: u32,
    n_dom: u32,
    cpumap: XenctlBitmap,
}
const _: () = assert!(size_of::<CpupoolOp>() == 40 && offset_of!(CpupoolOp, cpumap) == 24);

fn failed(op: &str) -> impl FnOnce(PrivcmdError) -> HostError + '_ {
    move |e| HostError::Failed(format!("{op}: {e}"))
}

fn os_failed(op: &str) -> impl FnOnce(io::Error) -> HostError + '_ {
    move |source| HostError::Os {
        what: op.to_owned(),
        source,
    }
}

/// A buffer of at least `bytes` bytes (one page at least).
fn buffer(bytes: usize) -> Result<HypercallBuffer, HostError> {
    HypercallBuffer::new(bytes.div_ceil(PAGE_SIZE).max(1))
        .map_err(failed("allocating a hypercall buffer"))
}

/// `bytes` up to the first NUL, as text.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `bytes` as lower-case hex digits (libxl's `build_id`).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `XENVER_cmd` with the argument in `buf` (zeroed first), or none.
fn xen_version(pc: &Privcmd, cmd: u64, buf: Option<&HypercallBuffer>) -> io::Result<i32> {
    if let Some(buf) = buf {
        buf.memory().zero().map_err(io::Error::other)?;
    }
    let arg = buf.map_or(0, HypercallBuffer::addr);
    // SAFETY: __HYPERVISOR_xen_version takes a sub-command and a pointer
    // to its argument; every XENVER_* used here writes at most 1024 bytes
    // (or, for XENVER_build_id, the length written at the start of the
    // buffer), and `buf` is a hypercall buffer of at least a page, or the
    // argument is null for the commands that take none.
    unsafe { pc.hypercall(HYPERVISOR_XEN_VERSION, [cmd, arg, 0, 0, 0]) }
}

/// A `char[len]` answer of `XENVER_cmd`; empty (logged) if Xen refuses.
fn xen_version_string(pc: &Privcmd, buf: &HypercallBuffer, cmd: u64, len: usize) -> String {
    match xen_version(pc, cmd, Some(buf)) {
        Ok(_) => {
            let mut bytes = vec![0; len];
            match buf.memory().read(0, &mut bytes) {
                Ok(()) => c_string(&bytes),
                Err(e) => {
                    log::warn!("reading XENVER {cmd}: {e}");
                    String::new()
                }
            }
        }
        Err(e) => {
            log::warn!("XENVER {cmd} failed: {e}");
            String::new()
        }
    }
}

/// The hypervisor's version and build (`libxl_get_version_info`).
pub(crate) fn version_info(pc: &Privcmd) -> Result<VersionInfo, HostError> {
    let version = xen_version(pc, XENVER_VERSION, None).map_err(os_failed("XENVER_version"))?;
    let version = version as u32;
    let buf = buffer(PAGE_SIZE)?;
    let mut info = VersionInfo {
        major: version >> 16,
        // libxl masks the minor number with 0xff.
        minor: version & 0xff,
        extra: xen_version_string(pc, &buf, XENVER_EXTRAVERSION, 16),
        capabilities: xen_version_string(pc, &buf, XENVER_CAPABILITIES, 1024),
        changeset: xen_version_string(pc, &buf, XENVER_CHANGESET, 64),
        commandline: xen_version_string(pc, &buf, XENVER_COMMANDLINE, 1024),
        ..VersionInfo::default()
    };
    match xen_version(pc, XENVER_COMPILE_INFO, Some(&buf))
        .map(|_| buf.memory().read_obj::<CompileInfo>(0))
    {
        Ok(Ok(cc)) => {
            info.compiler = c_string(&cc.compiler);
            info.compile_by = c_string(&cc.compile_by);
            info.compile_domain = c_string(&cc.compile_domain);
            info.compile_date = c_string(&cc.compile_date);
        }
        Ok(Err(e)) => log::warn!("reading XENVER_compile_info: {e}"),
        Err(e) => log::warn!("XENVER_compile_info failed: {e}"),
    }
    match xen_version(pc, XENVER_PLATFORM_PARAMETERS, Some(&buf))
        .map(|_| buf.memory().read_obj::<u64>(0))
    {
        Ok(Ok(virt_start)) => info.virt_start = virt_start,
        Ok(Err(e)) => log::warn!("reading XENVER_platform_parameters: {e}"),
        Err(e) => log::warn!("XENVER_platform_parameters failed: {e}"),
    }
    match xen_version(pc, XENVER_PAGESIZE, None) {
        Ok(size) => info.pagesize = size as u32,
        Err(e) => log::warn!("XENVER_pagesize failed: {e}"),
    }
    info.build_id = build_id(pc, &buf);
    Ok(info)
}

/// `XENVER_build_id` in hex; empty when Xen has none or refuses
/// (`EPERM`, `ENODATA`), as libxl does.
fn build_id(pc: &Privcmd, buf: &HypercallBuffer) -> String {
    let room = (buf.len() - 4) as u32;
    let result = buf
        .memory()
        .zero()
        .map_err(io::Error::other)
        .and_then(|()| {
            buf.memory().write_obj(0, &room).map_err(io::Error::other)?;
            // SAFETY: XENVER_build_id takes a `struct xen_build_id` whose
            // `len` (written above) is the room after it in `buf`, where Xen
            // writes at most that many bytes.
            unsafe {
                pc.hypercall(
                    HYPERVISOR_XEN_VERSION,
                    [XENVER_BUILD_ID, buf.addr(), 0, 0, 0],
                )
            }
        });
    match result {
        Ok(len) if len > 0 => {
            let mut id = vec![0; (len as usize).min(room as usize)];
            match buf.memory().read(4, &mut id) {
                Ok(()) => hex(&id),
                Err(e) => {
                    log::warn!("reading XENVER_build_id: {e}");
                    String::new()
                }
            }
        }
        Ok(_) => String::new(),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENODATA)) => String::new(),
        Err(e) => {
            log::warn!("XENVER_build_id failed: {e}");
            String::new()
        }
    }
}

/// HVM parameter `index` of `domid` (`xc_hvm_param_get`).
pub(crate) fn hvm_param(pc: &Privcmd, domid: DomId, index: u32) -> Result<u64, HostError> {
    let buf = buffer(size_of::<HvmParam>())?;
    let arg = HvmParam {
        domid,
        index,
        ..HvmParam::default()
    };
    buf.memory()
        .write_obj(0, &arg)
        .map_err(|e| HostError::Failed(format!("HVMOP_get_param: {e}")))?;
    // SAFETY: HVMOP_get_param takes one `struct xen_hvm_param`, which Xen
    // reads and writes back in `buf`.
    unsafe { pc.hypercall(HYPERVISOR_HVM_OP, [HVMOP_GET_PARAM, buf.addr(), 0, 0, 0]) }
        .map_err(os_failed("HVMOP_get_param"))?;
    let reply: HvmParam = buf
        .memory()
        .read_obj(0)
        .map_err(|e| HostError::Failed(format!("HVMOP_get_param: {e}")))?;
    Ok(reply.value)
}

/// Sets `domid`'s populate-on-demand target to `pages`
/// (`xc_domain_set_pod_target`).
pub(crate) fn set_pod_target(pc: &Privcmd, domid: DomId, pages: u64) -> Result<(), HostError> {
    let buf = buffer(size_of::<PodTarget>())?;
    let arg = PodTarget {
        target_pages: pages,
        domid,
        ..PodTarget::default()
    };
    buf.memory()
        .write_obj(0, &arg)
        .map_err(|e| HostError::Failed(format!("XENMEM_set_pod_target: {e}")))?;
    // SAFETY: XENMEM_set_pod_target takes one `struct xen_pod_target`,
    // which Xen reads and writes back in `buf`.
    unsafe {
        pc.hypercall(
            HYPERVISOR_MEMORY_OP,
            [u64::from(XENMEM_SET_POD_TARGET), buf.addr(), 0, 0, 0],
        )
    }
    .map_err(os_failed("XENMEM_set_pod_target"))?;
    Ok(())
}

/// Pages freed and frames used by memory sharing; 0 where Xen has no
/// sharing (libxl reads `ENOSYS` so; other failures are logged, as the
/// figures are only shown).
pub(crate) fn sharing_pages(pc: &Privcmd) -> (u64, u64) {
    let ask = |cmd: u64, op: &str| {
        // SAFETY: these XENMEM sub-commands take no argument (null).
        match unsafe { pc.hypercall(HYPERVISOR_MEMORY_OP, [cmd, 0, 0, 0, 0]) } {
            Ok(n) => u64::try_from(n).unwrap_or(0),
            Err(e) => {
                if e.raw_os_error() != Some(libc::ENOSYS) {
                    log::warn!("{op} failed: {e}");
                }
                0
            }
        }
    };
    (
        ask(
            XENMEM_GET_SHARING_FREED_PAGES,
            "XENMEM_get_sharing_freed_pages",
        ),
        ask(
            XENMEM_GET_SHARING_SHARED_PAGES,
            "XENMEM_get_sharing_shared_pages",
        ),
    )
}

/// The guest address width of PV domain `domid`, in bits
/// (`XEN_DOMCTL_get_address_size`).
pub(crate) fn address_size(pc: &Privcmd, domid: DomId) -> Result<u32, HostError> {
    let domctl = XenDomctl::with_payload(
        XEN_DOMCTL_GET_ADDRESS_SIZE,
        domid,
        &XenDomctlAddressSize::default(),
    );
    // SAFETY: XEN_DOMCTL_get_address_size's payload has no guest handle.
    let reply = unsafe { pc.domctl(&domctl) }.map_err(failed("XEN_DOMCTL_get_address_size"))?;
    Ok(reply.payload::<XenDomctlAddressSize>().size)
}

/// `XEN_DOMCTL_SENDTRIGGER_*` for `trigger`; `None` for S3 resume, which
/// goes through QEMU.
fn trigger_code(trigger: Trigger) -> Option<u32> {
    match trigger {
        Trigger::Nmi => Some(0),
        Trigger::Reset => Some(1),
        Trigger::Init => Some(2),
        Trigger::Power => Some(3),
        Trigger::Sleep => Some(4),
        Trigger::S3Resume => None,
    }
}

/// Injects `trigger` into HVM domain `domid` (`xc_domain_send_trigger`).
pub(crate) fn send_trigger(
    pc: &Privcmd,
    domid: DomId,
    trigger: Trigger,
    vcpu: u32,
) -> Result<(), HostError> {
    let code = trigger_code(trigger).ok_or(HostError::Unsupported(
        "S3 resume (it needs the QEMU device model, which rxl does not run)",
    ))?;
    let domctl = XenDomctl::with_payload(
        XEN_DOMCTL_SENDTRIGGER,
        domid,
        &SendTrigger {
            trigger: code,
            vcpu,
        },
    );
    // SAFETY: XEN_DOMCTL_sendtrigger's payload has no guest handle.
    unsafe { pc.domctl(&domctl) }.map_err(failed("XEN_DOMCTL_sendtrigger"))?;
    Ok(())
}

/// `nr_bits` bits in a buffer of their own, for a `xenctl_bitmap` Xen
/// fills; returns the buffer and the bitmap pointing at it.
fn bitmap(nr_bits: u32) -> Result<(HypercallBuffer, XenctlBitmap), HostError> {
    let buf = buffer(nr_bits.div_ceil(8) as usize)?;
    let map = XenctlBitmap {
        bitmap: buf.addr(),
        nr_bits,
        _pad: 0,
    };
    Ok((buf, map))
}

/// Reads the `nr_bits` bits a bitmap call wrote.
fn read_bitmap(buf: &HypercallBuffer, nr_bits: u32) -> Result<CpuMap, HostError> {
    let mut bytes = vec![0; nr_bits.div_ceil(8) as usize];
    buf.memory()
        .read(0, &mut bytes)
        .map_err(|e| HostError::Failed(format!("reading a bitmap from Xen: {e}")))?;
    Ok(CpuMap::from_bytes(bytes))
}

/// The NUMA nodes `domid` prefers (`xc_domain_node_getaffinity`), of
/// `max_nodes` nodes.
pub(crate) fn node_affinity(
    pc: &Privcmd,
    domid: DomId,
    max_nodes: u32,
) -> Result<CpuMap, HostError> {
    let nr_bits = max_nodes.clamp(1, MAX_ITEMS).div_ceil(8) * 8;
    let (buf, map) = bitmap(nr_bits)?;
    let domctl = XenDomctl::with_payload(XEN_DOMCTL_GETNODEAFFINITY, domid, &map);
    // SAFETY: the payload's one handle points at `buf`, which has room for
    // the `nr_bits` bits Xen writes; nothing else touches `buf` meanwhile.
    unsafe { pc.domctl(&domctl) }.map_err(failed("XEN_DOMCTL_getnodeaffinity"))?;
    read_bitmap(&buf, nr_bits)
}

/// The CPUs in no cpupool (`xc_cpupool_freeinfo`), of `max_cpus` CPUs.
pub(crate) fn free_cpus(pc: &Privcmd, max_cpus: u32) -> Result<CpuMap, HostError> {
    let nr_bits = max_cpus.clamp(1, MAX_ITEMS).div_ceil(8) * 8;
    let (buf, cpumap) = bitmap(nr_bits)?;
    let op = CpupoolOp {
        op: XEN_SYSCTL_CPUPOOL_OP_FREEINFO,
        cpumap,
        ..CpupoolOp::default()
    };
    // SAFETY: the payload's one handle points at `buf`, which has room for
    // the `nr_bits` bits Xen writes.
    unsafe { pc.sysctl(&XenSysctl::with_payload(XEN_SYSCTL_CPUPOOL_OP, &op)) }
        .map_err(failed("XEN_SYSCTL_cpupool_op (freeinfo)"))?;
    read_bitmap(&buf, nr_bits)
}

fn count(what: &str, n: u32) -> Result<u32, HostError> {
    if n > MAX_ITEMS {
        return Err(HostError::Failed(format!(
            "Xen reports {n} {what}, more than rxl handles"
        )));
    }
    Ok(n)
}

/// Each physical CPU's core, socket and node; `None` for CPUs not
/// present (`libxl_get_cpu_topology`).
pub(crate) fn cpu_topology(pc: &Privcmd) -> Result<Vec<Option<CpuTopology>>, HostError> {
    // SAFETY: a null handle asks for the number of CPUs only.
    let reply = unsafe {
        pc.sysctl(&XenSysctl::with_payload(
            XEN_SYSCTL_CPUTOPOINFO,
            &CputopoInfo::default(),
        ))
    }
    .map_err(failed("XEN_SYSCTL_cputopoinfo"))?;
    let n = count("CPUs", reply.payload::<CputopoInfo>().num_cpus)?;
    let buf = buffer(n as usize * size_of::<Cputopo>())?;
    let arg = CputopoInfo {
        num_cpus: n,
        cputopo: buf.addr(),
        ..CputopoInfo::default()
    };
    // SAFETY: the handle points at `buf`, with room for `n` records.
    let reply = unsafe { pc.sysctl(&XenSysctl::with_payload(XEN_SYSCTL_CPUTOPOINFO, &arg)) }
        .map_err(failed("XEN_SYSCTL_cputopoinfo"))?;
    let written = reply.payload::<CputopoInfo>().num_cpus.min(n);
    (0..written as usize)
        .map(|i| {
            let t: Cputopo = buf
                .memory()
                .read_obj(i * size_of::<Cputopo>())
                .map_err(|e| HostError::Failed(format!("reading the CPU topology: {e}")))?;
            Ok((t.core != XEN_INVALID_ID).then_some(CpuTopology {
                core: t.core,
                socket: t.socket,
                node: t.node,
            }))
        })
        .collect()
}

/// Each NUMA node's memory and distances; `None` for nodes without
/// memory information (`libxl_get_numainfo`).
pub(crate) fn numa_info(pc: &Privcmd) -> Result<Vec<Option<NumaNode>>, HostError> {
    // SAFETY: null handles ask for the number of nodes only.
    let reply = unsafe {
        pc.sysctl(&XenSysctl::with_payload(
            XEN_SYSCTL_NUMAINFO,
            &NumaInfo::default(),
        ))
    }
    .map_err(failed("XEN_SYSCTL_numainfo"))?;
    let n = count("NUMA nodes", reply.payload::<NumaInfo>().num_nodes)?.min(1024) as usize;
    let distances_at = n * size_of::<MemInfo>();
    let buf = buffer(distances_at + n * n * 4)?;
    let arg = NumaInfo {
        num_nodes: n as u32,
        meminfo: buf.addr(),
        distance: buf.addr() + distances_at as u64,
        ..NumaInfo::default()
    };
    // SAFETY: `meminfo` has room for `n` records and `distance` for `n * n`
    // entries, both in `buf`.
    let reply = unsafe { pc.sysctl(&XenSysctl::with_payload(XEN_SYSCTL_NUMAINFO, &arg)) }
        .map_err(failed("XEN_SYSCTL_numainfo"))?;
    let written = (reply.payload::<NumaInfo>().num_nodes as usize).min(n);
    let read_err = |e| HostError::Failed(format!("reading the NUMA information: {e}"));
    (0..written)
        .map(|i| {
            let m: MemInfo = buf
                .memory()
                .read_obj(i * size_of::<MemInfo>())
                .map_err(read_err)?;
            let distances = (0..written)
                .map(|j| {
                    buf.memory()
                        .read_obj::<u32>(distances_at + (i * written + j) * 4)
                        .map_err(read_err)
                })
                .collect::<Result<Vec<u32>, HostError>>()?;
            Ok((m.memsize != XEN_INVALID_MEM_SZ).then_some(NumaNode {
                size: m.memsize,
                free: m.memfree,
                distances,
            }))
        })
        .collect()
}

/// The NUMA node of each of `devs` (`xc_pcitopoinfo`); `None` where Xen
/// does not know the device or its node.
pub(crate) fn pci_nodes(pc: &Privcmd, devs: &[PciDevice]) -> Result<Vec<Option<u32>>, HostError> {
    let n = devs.len().min(MAX_ITEMS as usize);
    if n == 0 {
        return Ok(Vec::new());
    }
    let nodes_at = n * size_of::<PciDevice>();
    let buf = buffer(nodes_at + n * 4)?;
    let write_err = |e| HostError::Failed(format!("preparing the PCI topology query: {e}"));
    for (i, dev) in devs[..n].iter().enumerate() {
        buf.memory()
            .write_obj(i * size_of::<PciDevice>(), dev)
            .map_err(write_err)?;
    }
    let mut done = 0usize;
    // Ends: Xen processes at least one device per call, or it fails.
    while done < n {
        let arg = PcitopoInfo {
            num_devs: (n - done) as u32,
            devs: buf.addr() + (done * size_of::<PciDevice>()) as u64,
            nodes: buf.addr() + (nodes_at + done * 4) as u64,
            ..PcitopoInfo::default()
        };
        // SAFETY: both handles point into `buf`, with room for the
        // `n - done` devices and nodes left.
        let reply = unsafe { pc.sysctl(&XenSysctl::with_payload(XEN_SYSCTL_PCITOPOINFO, &arg)) }
            .map_err(failed("XEN_SYSCTL_pcitopoinfo"))?;
        let processed = reply.payload::<PcitopoInfo>().num_devs as usize;
        if processed == 0 {
            return Err(HostError::Failed(
                "XEN_SYSCTL_pcitopoinfo made no progress".into(),
            ));
        }
        done += processed.min(n - done);
    }
    (0..n)
        .map(|i| {
            let node: u32 = buf
                .memory()
                .read_obj(nodes_at + i * 4)
                .map_err(|e| HostError::Failed(format!("reading the PCI topology: {e}")))?;
            Ok((node != XEN_INVALID_ID && node != XEN_INVALID_DEV).then_some(node))
        })
        .collect()
}

/// Parses a sysfs PCI device name, `SSSS:BB:DD.F`.
pub(crate) fn parse_pci_name(name: &str) -> Option<PciDevice> {
    let (seg, rest) = name.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let seg = u16::from_str_radix(seg, 16).ok()?;
    let bus = u8::from_str_radix(bus, 16).ok()?;
    let dev = u8::from_str_radix(dev, 16).ok().filter(|d| *d < 32)?;
    let func = func.parse::<u8>().ok().filter(|f| *f < 8)?;
    Some(PciDevice {
        seg,
        bus,
        devfn: dev << 3 | func,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_strings_stop_at_the_nul() {
        assert_eq!(c_string(b".0\0junk"), ".0");
        assert_eq!(c_string(b"full"), "full");
        assert_eq!(c_string(b"\0"), "");
    }

    #[test]
    fn build_ids_print_as_hex() {
        assert_eq!(hex(&[0x00, 0xab, 0x10]), "00ab10");
    }

    #[test]
    fn triggers_have_xen_s_numbers() {
        assert_eq!(trigger_code(Trigger::Power), Some(3));
        assert_eq!(trigger_code(Trigger::Reset), Some(1));
        assert_eq!(trigger_code(Trigger::Nmi), Some(0));
        assert_eq!(trigger_code(Trigger::S3Resume), None);
    }

    #[test]
    fn pci_names_parse_as_libxl_reads_them() {
        assert_eq!(
            parse_pci_name("0000:00:1f.2"),
            Some(PciDevice {
                seg: 0,
                bus: 0,
                devfn: 0x1f << 3 | 2
            })
        );
        assert_eq!(
            parse_pci_name("0001:3a:00.0").map(|d| (d.seg, d.bus)),
            Some((1, 0x3a))
        );
        assert_eq!(parse_pci_name("0000:00:20.0"), None);
        assert_eq!(parse_pci_name("junk"), None);
    }
}
