//! Every ioctl number, structure size, field offset and constant of this
//! module, compared with the values C computes from the real headers:
//! the kernel's uapi as shipped by linux-libc-dev (`/usr/include/xen/*.h`)
//! and Xen's copy as shipped by libxen-dev (`/usr/include/xen/sys/*.h`).
//!
//! The tests compile a small C program with `cc`; a missing compiler or
//! header fails them, loudly, rather than skipping.

use std::fmt::Write as _;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use super::evtchn::*;
use super::gntalloc::{
    alloc_gref_len, IoctlGntallocAllocGref, IoctlGntallocDeallocGref, IoctlGntallocUnmapNotify, GNTALLOC_FLAG_WRITABLE,
    IOCTL_GNTALLOC_ALLOC_GREF, IOCTL_GNTALLOC_DEALLOC_GREF, IOCTL_GNTALLOC_SET_UNMAP_NOTIFY,
};
use super::gntdev::*;
use super::privcmd::*;
use super::xenbus::*;
use super::{ioc, IOC_READ, IOC_WRITE};

/// One value: a C expression and what Rust says it is.
struct Check {
    c: String,
    rust: u64,
    /// Only in libxen-dev's headers.
    xen_tools_only: bool,
}

fn check(c: impl Into<String>, rust: u64) -> Check {
    Check { c: c.into(), rust, xen_tools_only: false }
}

macro_rules! value {
    ($name:ident) => {
        check(stringify!($name), u64::from($name))
    };
}

macro_rules! size {
    ($c:literal, $t:ty) => {
        check(concat!("sizeof(", $c, ")"), size_of::<$t>() as u64)
    };
}

macro_rules! offset {
    ($c:literal, $cfield:literal, $t:ty, $field:ident) => {
        check(concat!("offsetof(", $c, ", ", $cfield, ")"), offset_of!($t, $field) as u64)
    };
}

fn checks() -> Vec<Check> {
    vec![
        // evtchn.h
        value!(IOCTL_EVTCHN_BIND_VIRQ),
        value!(IOCTL_EVTCHN_BIND_INTERDOMAIN),
        value!(IOCTL_EVTCHN_BIND_UNBOUND_PORT),
        value!(IOCTL_EVTCHN_UNBIND),
        value!(IOCTL_EVTCHN_NOTIFY),
        value!(IOCTL_EVTCHN_RESET),
        value!(IOCTL_EVTCHN_RESTRICT_DOMID),
        size!("struct ioctl_evtchn_bind_virq", IoctlEvtchnBindVirq),
        size!("struct ioctl_evtchn_bind_interdomain", IoctlEvtchnBindInterdomain),
        offset!("struct ioctl_evtchn_bind_interdomain", "remote_port", IoctlEvtchnBindInterdomain, remote_port),
        size!("struct ioctl_evtchn_bind_unbound_port", IoctlEvtchnBindUnboundPort),
        size!("struct ioctl_evtchn_unbind", IoctlEvtchnUnbind),
        size!("struct ioctl_evtchn_notify", IoctlEvtchnNotify),
        size!("struct ioctl_evtchn_restrict_domid", IoctlEvtchnRestrictDomid),
        // gntalloc.h
        value!(IOCTL_GNTALLOC_ALLOC_GREF),
        value!(IOCTL_GNTALLOC_DEALLOC_GREF),
        value!(IOCTL_GNTALLOC_SET_UNMAP_NOTIFY),
        value!(GNTALLOC_FLAG_WRITABLE),
        size!("struct ioctl_gntalloc_alloc_gref", IoctlGntallocAllocGref),
        offset!("struct ioctl_gntalloc_alloc_gref", "flags", IoctlGntallocAllocGref, flags),
        offset!("struct ioctl_gntalloc_alloc_gref", "count", IoctlGntallocAllocGref, count),
        offset!("struct ioctl_gntalloc_alloc_gref", "index", IoctlGntallocAllocGref, index),
        offset!("struct ioctl_gntalloc_alloc_gref", "gref_ids", IoctlGntallocAllocGref, gref_ids),
        size!("struct ioctl_gntalloc_dealloc_gref", IoctlGntallocDeallocGref),
        offset!("struct ioctl_gntalloc_dealloc_gref", "count", IoctlGntallocDeallocGref, count),
        size!("struct ioctl_gntalloc_unmap_notify", IoctlGntallocUnmapNotify),
        offset!("struct ioctl_gntalloc_unmap_notify", "action", IoctlGntallocUnmapNotify, action),
        offset!(
            "struct ioctl_gntalloc_unmap_notify",
            "event_channel_port",
            IoctlGntallocUnmapNotify,
            event_channel_port
        ),
        // gntdev.h
        value!(IOCTL_GNTDEV_MAP_GRANT_REF),
        value!(IOCTL_GNTDEV_UNMAP_GRANT_REF),
        value!(IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR),
        value!(IOCTL_GNTDEV_SET_MAX_GRANTS),
        value!(IOCTL_GNTDEV_SET_UNMAP_NOTIFY),
        value!(IOCTL_GNTDEV_GRANT_COPY),
        check("UNMAP_NOTIFY_CLEAR_BYTE", u64::from(super::gntdev::UNMAP_NOTIFY_CLEAR_BYTE)),
        check("UNMAP_NOTIFY_SEND_EVENT", u64::from(super::gntdev::UNMAP_NOTIFY_SEND_EVENT)),
        check("UNMAP_NOTIFY_CLEAR_BYTE", u64::from(super::gntalloc::UNMAP_NOTIFY_CLEAR_BYTE)),
        check("UNMAP_NOTIFY_SEND_EVENT", u64::from(super::gntalloc::UNMAP_NOTIFY_SEND_EVENT)),
        size!("struct ioctl_gntdev_grant_ref", IoctlGntdevGrantRef),
        offset!("struct ioctl_gntdev_grant_ref", "ref", IoctlGntdevGrantRef, ref_),
        size!("struct ioctl_gntdev_map_grant_ref", IoctlGntdevMapGrantRef),
        offset!("struct ioctl_gntdev_map_grant_ref", "index", IoctlGntdevMapGrantRef, index),
        offset!("struct ioctl_gntdev_map_grant_ref", "refs", IoctlGntdevMapGrantRef, refs),
        size!("struct ioctl_gntdev_unmap_grant_ref", IoctlGntdevUnmapGrantRef),
        offset!("struct ioctl_gntdev_unmap_grant_ref", "count", IoctlGntdevUnmapGrantRef, count),
        size!("struct ioctl_gntdev_get_offset_for_vaddr", IoctlGntdevGetOffsetForVaddr),
        offset!("struct ioctl_gntdev_get_offset_for_vaddr", "offset", IoctlGntdevGetOffsetForVaddr, offset),
        offset!("struct ioctl_gntdev_get_offset_for_vaddr", "count", IoctlGntdevGetOffsetForVaddr, count),
        size!("struct ioctl_gntdev_set_max_grants", IoctlGntdevSetMaxGrants),
        size!("struct ioctl_gntdev_unmap_notify", IoctlGntdevUnmapNotify),
        offset!("struct ioctl_gntdev_unmap_notify", "action", IoctlGntdevUnmapNotify, action),
        offset!("struct ioctl_gntdev_unmap_notify", "event_channel_port", IoctlGntdevUnmapNotify, event_channel_port),
        size!("struct gntdev_grant_copy_segment", GntdevGrantCopySegment),
        offset!("struct gntdev_grant_copy_segment", "dest", GntdevGrantCopySegment, dest),
        offset!("struct gntdev_grant_copy_segment", "len", GntdevGrantCopySegment, len),
        offset!("struct gntdev_grant_copy_segment", "flags", GntdevGrantCopySegment, flags),
        offset!("struct gntdev_grant_copy_segment", "status", GntdevGrantCopySegment, status),
        check("sizeof(((struct gntdev_grant_copy_segment *)0)->source)", size_of::<GntdevGrantCopyPtr>() as u64),
        check(
            "offsetof(struct gntdev_grant_copy_segment, source.foreign.offset)",
            offset_of!(GntdevGrantCopyForeign, offset) as u64,
        ),
        check(
            "offsetof(struct gntdev_grant_copy_segment, source.foreign.domid)",
            offset_of!(GntdevGrantCopyForeign, domid) as u64,
        ),
        size!("struct ioctl_gntdev_grant_copy", IoctlGntdevGrantCopy),
        offset!("struct ioctl_gntdev_grant_copy", "segments", IoctlGntdevGrantCopy, segments),
        // privcmd.h
        value!(IOCTL_PRIVCMD_HYPERCALL),
        value!(IOCTL_PRIVCMD_MMAP),
        value!(IOCTL_PRIVCMD_MMAPBATCH),
        value!(IOCTL_PRIVCMD_MMAPBATCH_V2),
        value!(IOCTL_PRIVCMD_DM_OP),
        value!(IOCTL_PRIVCMD_RESTRICT),
        value!(IOCTL_PRIVCMD_MMAP_RESOURCE),
        value!(PRIVCMD_MMAPBATCH_MFN_ERROR),
        value!(PRIVCMD_MMAPBATCH_PAGED_ERROR),
        size!("struct privcmd_hypercall", PrivcmdHypercall),
        offset!("struct privcmd_hypercall", "arg", PrivcmdHypercall, arg),
        size!("struct privcmd_mmap_entry", PrivcmdMmapEntry),
        size!("struct privcmd_mmap", PrivcmdMmap),
        offset!("struct privcmd_mmap", "dom", PrivcmdMmap, dom),
        offset!("struct privcmd_mmap", "entry", PrivcmdMmap, entry),
        size!("struct privcmd_mmapbatch", PrivcmdMmapbatch),
        offset!("struct privcmd_mmapbatch", "addr", PrivcmdMmapbatch, addr),
        offset!("struct privcmd_mmapbatch", "arr", PrivcmdMmapbatch, arr),
        size!("struct privcmd_mmapbatch_v2", PrivcmdMmapbatchV2),
        offset!("struct privcmd_mmapbatch_v2", "dom", PrivcmdMmapbatchV2, dom),
        offset!("struct privcmd_mmapbatch_v2", "addr", PrivcmdMmapbatchV2, addr),
        offset!("struct privcmd_mmapbatch_v2", "arr", PrivcmdMmapbatchV2, arr),
        offset!("struct privcmd_mmapbatch_v2", "err", PrivcmdMmapbatchV2, err),
        size!("struct privcmd_dm_op_buf", PrivcmdDmOpBuf),
        size!("struct privcmd_dm_op", PrivcmdDmOp),
        offset!("struct privcmd_dm_op", "ubufs", PrivcmdDmOp, ubufs),
        size!("struct privcmd_mmap_resource", PrivcmdMmapResource),
        offset!("struct privcmd_mmap_resource", "type", PrivcmdMmapResource, type_),
        offset!("struct privcmd_mmap_resource", "id", PrivcmdMmapResource, id),
        offset!("struct privcmd_mmap_resource", "idx", PrivcmdMmapResource, idx),
        offset!("struct privcmd_mmap_resource", "num", PrivcmdMmapResource, num),
        offset!("struct privcmd_mmap_resource", "addr", PrivcmdMmapResource, addr),
        // xenbus_dev.h (Xen's tools only)
        Check { xen_tools_only: true, ..value!(IOCTL_XENBUS_BACKEND_EVTCHN) },
        Check { xen_tools_only: true, ..value!(IOCTL_XENBUS_BACKEND_SETUP) },
    ]
}

/// Compiles `prelude` + a `main` printing every check's C value, runs it,
/// and compares with the Rust values.
fn compare_with_c(flavor: &str, prelude: &str, include_dirs: &[PathBuf], xen_tools: bool) {
    let checks: Vec<Check> = checks().into_iter().filter(|c| xen_tools || !c.xen_tools_only).collect();
    let mut source =
        format!("#include <stddef.h>\n#include <stdint.h>\n#include <stdio.h>\n{prelude}\nint main(void)\n{{\n");
    for c in &checks {
        writeln!(source, "    printf(\"%llu\\n\", (unsigned long long)({}));", c.c).unwrap();
    }
    source.push_str("    return 0;\n}\n");

    let dir = scratch_dir(flavor);
    let c_file = dir.join("uapi.c");
    let exe = dir.join("uapi");
    std::fs::write(&c_file, &source).unwrap();
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.args(["-Wall", "-Werror", "-o"]).arg(&exe).arg(&c_file);
    for inc in include_dirs {
        cc.arg("-I").arg(inc);
    }
    let out = cc.output().unwrap_or_else(|e| panic!("cannot run the C compiler (install gcc): {e}"));
    assert!(
        out.status.success(),
        "compiling against the {flavor} headers failed (install linux-libc-dev and libxen-dev):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success());
    let stdout = String::from_utf8(run.stdout).unwrap();
    let c_values: Vec<u64> = stdout.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(c_values.len(), checks.len());

    let mismatches: Vec<String> = checks
        .iter()
        .zip(&c_values)
        .filter(|(check, c)| check.rust != **c)
        .map(|(check, c)| format!("{}: C says {c:#x}, Rust says {:#x}", check.c, check.rust))
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(mismatches.is_empty(), "{flavor} headers disagree:\n{}", mismatches.join("\n"));
}

fn scratch_dir(flavor: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xen-linux-uapi-{flavor}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn uapi_matches_the_kernel_headers() {
    // The kernel's uapi headers use the kernel's own Xen types, which are
    // not installed; define them as include/xen/interface/ does.
    let shim = scratch_dir("kernel-shim");
    std::fs::create_dir_all(shim.join("xen/interface")).unwrap();
    std::fs::write(shim.join("xen/interface/xen.h"), "/* types defined by the test prelude */\n").unwrap();
    let prelude = "#include <linux/ioctl.h>\n\
                   #include <linux/types.h>\n\
                   typedef uint16_t domid_t;\n\
                   typedef uint32_t grant_ref_t;\n\
                   typedef unsigned long xen_pfn_t;\n\
                   #include <xen/evtchn.h>\n\
                   #include <xen/gntalloc.h>\n\
                   #include <xen/gntdev.h>\n\
                   #include <xen/privcmd.h>\n";

    compare_with_c("kernel", prelude, std::slice::from_ref(&shim), false);

    std::fs::remove_dir_all(&shim).unwrap();
}

#[test]
fn uapi_matches_xen_tools_headers() {
    let prelude = "#include <xen/xen.h>\n\
                   #include <xen/grant_table.h>\n\
                   #include <xen/sys/evtchn.h>\n\
                   #include <xen/sys/gntalloc.h>\n\
                   #include <xen/sys/gntdev.h>\n\
                   #include <xen/sys/privcmd.h>\n\
                   #include <xen/sys/xenbus_dev.h>\n\
                   /* Xen's copy names the kernel's gntdev_grant_copy_segment so. */\n\
                   #define gntdev_grant_copy_segment ioctl_gntdev_grant_copy_segment\n";

    compare_with_c("xen-tools", prelude, &[], true);
}

#[test]
fn ioc_packs_fields_as_the_kernel_does() {
    // _IOC(_IOC_READ|_IOC_WRITE, 'x', 0x12, 0x345) by hand.
    assert_eq!(ioc(IOC_READ | IOC_WRITE, b'x', 0x12, 0x345), (3 << 30) | (0x345 << 16) | (0x78 << 8) | 0x12);
}

#[test]
fn variable_length_buffers_cover_the_fixed_part() {
    assert_eq!(alloc_gref_len(1), Some(24));
    assert_eq!(alloc_gref_len(3), Some(28));
    assert_eq!(map_grant_ref_len(1), Some(24));
    assert_eq!(map_grant_ref_len(4), Some(48));
    assert_eq!(map_grant_ref_len(usize::MAX), None);
}
