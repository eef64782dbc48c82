//! Debian's guest kernels from the test host's cache, when present: unwrap,
//! parse, lay out and build them, and check the result as the MMU and the
//! kernel would see it. Skipped (with a note) where the files are absent.

use std::path::{Path, PathBuf};

use crate::decompress::Compression;
use crate::elf::{ElfKernel, XENFEAT_WRITABLE_PAGE_TABLES};
use crate::image::{load_kernel, ImageFormat};
use crate::pv::tests::{check_build, scrambled_mfns};
use crate::pv::{PvConfig, PvLayout, StartInfoParams};
use crate::pvh::tests::check_pvh_build;
use crate::pvh::{PvhConfig, PvhLayout};
use crate::VecGuestMemory;

const CACHE: &str = "/root/.cache/rxen/host/guest-a73d79888c41799e";

fn read(name: &str) -> Option<Vec<u8>> {
    let path: PathBuf = Path::new(CACHE).join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            eprintln!("skipping: {} is not readable here ({e})", path.display());
            None
        }
    }
}

fn check_kernel(name: &str, compression: Compression) {
    let Some(file) = read(name) else { return };
    let image = load_kernel(&file).unwrap();
    assert!(
        matches!(image.format, ImageFormat::BzImage { compression: c, .. } if c == compression),
        "{:?}",
        image.format
    );
    let kernel = ElfKernel::parse(&image.elf).unwrap();
    let notes = kernel.notes();
    eprintln!("{name}: {notes:#x?}");

    // What every x86-64 Linux with CONFIG_XEN_PV declares.
    assert_eq!(notes.virt_base, Some(0xffff_ffff_8000_0000));
    assert_eq!(notes.guest_os.as_deref(), Some("linux"));
    assert_eq!(notes.xen_version.as_deref(), Some("xen-3.0"));
    assert_eq!(notes.init_p2m, Some(0x80_0000_0000));
    assert_eq!(notes.mod_start_pfn, Some(1));
    assert!(notes.features.supports(XENFEAT_WRITABLE_PAGE_TABLES));
    assert!(notes.phys32_entry.is_some(), "CONFIG_PVH");
    let params = kernel.pv_params().unwrap();
    assert_eq!(
        params.kstart, 0xffff_ffff_8100_0000,
        "CONFIG_PHYSICAL_START"
    );
    assert!((params.kstart..params.kend).contains(&params.entry));
    // Kernels with the XSA-466 fixes (6.1.119+, 6.12) fill their hypercall
    // page themselves and no longer have the note.
    if let Some(hypercall) = params.hypercall_page {
        assert_eq!(hypercall % 4096, 0);
    }

    let ramdisk = read("initrd.img");
    let mut config = PvConfig::new(256, 2, "console=hvc0 root=/dev/xvda1 ro");
    if let Some(ramdisk) = &ramdisk {
        config = config.with_ramdisk(ramdisk.len() as u64);
    }
    let layout = PvLayout::new(&kernel, &config).unwrap();
    eprintln!("{name}: {layout:#x?}");
    let mfns = scrambled_mfns(layout.total_pages);
    let mut mem = VecGuestMemory::new(layout.total_pages);
    let start = StartInfoParams {
        shared_info_mfn: 0x12345,
        store_evtchn: 3,
        console_evtchn: 4,
    };
    let boot = layout
        .build(&kernel, ramdisk.as_deref(), &mfns, &start, &mut mem)
        .unwrap();

    check_build(&layout, &boot, &mem, &mfns, &start, ramdisk.as_deref());
    assert_eq!(
        boot.hypercall_page.map(|page| page.pfn),
        params
            .hypercall_page
            .map(|vaddr| (vaddr - 0xffff_ffff_8000_0000) >> 12)
    );
    // The loaded text matches the ELF's first segment.
    let first = kernel.segments()[0];
    let expected = &image.elf[first.offset as usize..][..4096];
    let pfn = (first.paddr - kernel.paddr_range().start) / 4096 + layout.kernel.pfn;
    assert_eq!(mem.page(pfn).unwrap(), expected);

    // The same kernel as PVH.
    let mut config = PvhConfig::new(256, 2, "console=hvc0");
    if let Some(ramdisk) = &ramdisk {
        config = config.with_ramdisk(ramdisk.len() as u64);
    }
    let layout = PvhLayout::new(&kernel, &config).unwrap();
    let mut mem = VecGuestMemory::new(layout.total_pages);
    let boot = layout
        .build(&kernel, ramdisk.as_deref(), 0, &mut mem)
        .unwrap();
    assert_eq!(Some(u64::from(boot.entry)), notes.phys32_entry);
    assert_eq!(layout.kernel.pfn, 0x1000);
    check_pvh_build(&layout, &boot, &mem, ramdisk.as_deref());
    assert_eq!(mem.page(pfn).unwrap(), expected);
}

#[test]
fn debian_6_1_lz4_kernel_builds() {
    check_kernel("vmlinuz-6.1.0-56-cloud-amd64", Compression::Lz4Legacy);
}

#[test]
fn debian_6_12_zstd_kernel_builds() {
    check_kernel("vmlinuz-6.12.117+deb12-cloud-amd64", Compression::Zstd);
}
