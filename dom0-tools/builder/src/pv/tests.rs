use std::collections::HashMap;

use hypercall_abi::xen::start_info::StartInfo;
use zerocopy::FromBytes;

use super::*;
use crate::elf::tests::{ElfBuilder, KERNEL_PADDR, VIRT_BASE};
use crate::elf::XEN_ELFNOTE_INIT_P2M;
use crate::elf::XEN_ELFNOTE_MOD_START_PFN;
use crate::pagetable::{L1_PROT, PAGE_PRESENT, PAGE_RW, UPPER_PROT};
use crate::VecGuestMemory;

/// An mfn list that is no identity, so that pfn/mfn mix-ups show.
pub(crate) fn scrambled_mfns(pages: u64) -> Vec<u64> {
    (0..pages).map(|pfn| 0x10_0000 + (pfn ^ 0x5)).collect()
}

/// Walks the guest's page tables like the MMU: from `cr3` down to the L1
/// entry of `vaddr`. Returns the pfn it maps and the flags of the L1 entry,
/// and checks the upper levels on the way.
pub(crate) fn walk(
    mem: &VecGuestMemory,
    mfn_to_pfn: &HashMap<u64, u64>,
    cr3: u64,
    vaddr: u64,
) -> Option<(u64, u64)> {
    let mut table_pfn = mfn_to_pfn[&(cr3 >> PAGE_SHIFT)];
    for level in (0..4).rev() {
        let index = (vaddr >> (PAGE_SHIFT + 9 * level)) & 511;
        let bytes = mem.read(table_pfn, index * 8, 8)?;
        let entry = u64::from_le_bytes(bytes.try_into().unwrap());
        if entry & PAGE_PRESENT == 0 {
            return None;
        }
        let pfn = mfn_to_pfn[&((entry & PTE_ADDR_MASK) >> PAGE_SHIFT)];
        if level == 0 {
            return Some((pfn, entry & !PTE_ADDR_MASK));
        }
        assert_eq!(
            entry & !PTE_ADDR_MASK,
            UPPER_PROT,
            "level {} entry of {vaddr:#x}",
            level + 1
        );
        table_pfn = pfn;
    }
    None
}

pub(crate) fn inverse(mfns: &[u64]) -> HashMap<u64, u64> {
    mfns.iter()
        .enumerate()
        .map(|(pfn, &mfn)| (mfn, pfn as u64))
        .collect()
}

pub(crate) fn read_start_info(mem: &VecGuestMemory, pfn: u64) -> StartInfo {
    let bytes = mem
        .read(pfn, 0, core::mem::size_of::<StartInfo>() as u64)
        .unwrap();
    StartInfo::read_from_bytes(bytes).unwrap()
}

/// Checks what any correct PV build must satisfy, whatever the kernel.
pub(crate) fn check_build(
    layout: &PvLayout,
    boot: &PvBootState,
    mem: &VecGuestMemory,
    mfns: &[u64],
    start: &StartInfoParams,
    ramdisk: Option<&[u8]>,
) {
    let m2p = inverse(mfns);
    let virt_base = layout.kernel_params.virt_base;

    // Every page from virt_base to the end of the initial mapping maps its
    // pfn; page-table pages read-only, all else writable.
    let tables: Vec<u64> = boot.page_table_pfns.clone();
    let mapped_pages = (layout.virt_pgtab_end - virt_base) / PAGE_SIZE;
    for pfn in 0..mapped_pages {
        let vaddr = virt_base + pfn * PAGE_SIZE;
        let (mapped, flags) = walk(mem, &m2p, boot.vcpu.cr3, vaddr)
            .unwrap_or_else(|| panic!("{vaddr:#x} is not mapped"));
        assert_eq!(mapped, pfn, "{vaddr:#x}");
        if tables.contains(&pfn) {
            assert_eq!(
                flags,
                L1_PROT & !PAGE_RW,
                "page table pfn {pfn:#x} must be read-only"
            );
        } else {
            assert_eq!(flags, L1_PROT, "pfn {pfn:#x}");
        }
    }
    // ... and nothing past it.
    assert_eq!(walk(mem, &m2p, boot.vcpu.cr3, layout.virt_pgtab_end), None);
    assert_eq!(layout.virt_pgtab_end % (4 << 20), 0);
    assert!(layout.virt_pgtab_end >= layout.vaddr_of(layout.bootstack_pfn + 1) + 512 * 1024);
    assert_eq!(layout.page_tables.pfn, boot.l4.pfn);
    assert_eq!(boot.pin_l4_mfn, mfns[boot.l4.pfn as usize]);

    // The p2m list, through its own mapping when it has one.
    let p2m_vaddr = layout.p2m.vaddr.unwrap();
    for pfn in [0, 1, layout.total_pages / 2, layout.total_pages - 1] {
        let vaddr = p2m_vaddr + pfn * 8;
        let (page, flags) = walk(mem, &m2p, boot.vcpu.cr3, vaddr).expect("p2m mapped");
        assert_eq!(flags, L1_PROT);
        let bytes = mem.read(page, vaddr % PAGE_SIZE, 8).unwrap();
        assert_eq!(
            u64::from_le_bytes(bytes.try_into().unwrap()),
            mfns[pfn as usize]
        );
    }

    // vCPU 0.
    let vcpu = &boot.vcpu;
    assert_eq!(vcpu.rip, layout.kernel_params.entry);
    assert_eq!(vcpu.rsi, virt_base + layout.start_info_pfn * PAGE_SIZE);
    assert_eq!(vcpu.rsp, virt_base + (layout.bootstack_pfn + 1) * PAGE_SIZE);
    assert_eq!(vcpu.kernel_sp, vcpu.rsp);
    assert_eq!(
        (vcpu.cs, vcpu.ss, vcpu.ds, vcpu.kernel_ss),
        (0xe033, 0xe02b, 0, 0xe02b)
    );
    assert_eq!(vcpu.flags, VGCF_IN_KERNEL | VGCF_ONLINE);
    assert_eq!(vcpu.rflags, 0x200);
    assert_eq!(
        walk(mem, &m2p, vcpu.cr3, vcpu.rsi).unwrap().0,
        layout.start_info_pfn
    );
    assert_eq!(
        walk(mem, &m2p, vcpu.cr3, vcpu.rsp - 8).unwrap().0,
        layout.bootstack_pfn
    );

    // The start info page.
    let info = read_start_info(mem, layout.start_info_pfn);
    assert!(info.has_x86_64_magic());
    assert_eq!(info.nr_pages, layout.total_pages);
    assert_eq!(info.shared_info, start.shared_info_mfn << 12);
    assert_eq!(info.store_mfn, mfns[layout.xenstore_pfn as usize]);
    assert_eq!(info.store_evtchn, start.store_evtchn);
    assert_eq!(info.console_domu().mfn, mfns[layout.console_pfn as usize]);
    assert_eq!(info.console_domu().evtchn, start.console_evtchn);
    assert_eq!(info.pt_base, virt_base + layout.page_tables.pfn * PAGE_SIZE);
    assert_eq!(info.pt_base, walk_back(layout, boot.l4.pfn));
    assert_eq!(info.nr_pt_frames, layout.page_tables.pages);
    assert_eq!(info.mfn_list, p2m_vaddr);
    assert_eq!(info.cmd_line_bytes(), layout.cmdline.as_bytes());
    if layout.p2m_separate {
        assert_eq!(info.first_p2m_pfn, layout.p2m.pfn);
        assert_eq!(info.nr_p2m_frames, layout.p2m.pages);
    } else {
        assert_eq!((info.first_p2m_pfn, info.nr_p2m_frames), (0, 0));
    }
    match (ramdisk, layout.ramdisk) {
        (Some(data), Some(segment)) => {
            assert_eq!(mem.read(segment.pfn, 0, data.len() as u64).unwrap(), data);
            if layout.kernel_params.unmapped_initrd {
                assert_eq!(info.flags & SIF_MOD_START_PFN, SIF_MOD_START_PFN);
                assert_eq!(info.mod_start, segment.pfn);
                assert_eq!(info.mod_len, segment.pages * PAGE_SIZE);
                assert!(segment.pfn * PAGE_SIZE >= layout.virt_pgtab_end - virt_base);
            } else {
                assert_eq!(info.mod_start, segment.vaddr.unwrap());
                assert_eq!(info.mod_len, data.len() as u64);
            }
        }
        (None, None) => assert_eq!((info.mod_start, info.mod_len), (0, 0)),
        other => panic!("ramdisk mismatch {other:?}"),
    }

    // Nothing overlaps; everything is inside the memory.
    let mut used: Vec<Range<u64>> = vec![
        layout.kernel.pfns(),
        layout.p2m.pfns(),
        layout.page_tables.pfns(),
        layout.start_info_pfn..layout.start_info_pfn + 1,
        layout.xenstore_pfn..layout.xenstore_pfn + 1,
        layout.console_pfn..layout.console_pfn + 1,
        layout.bootstack_pfn..layout.bootstack_pfn + 1,
    ];
    used.extend(layout.ramdisk.map(|r| r.pfns()));
    used.sort_by_key(|r| r.start);
    for pair in used.windows(2) {
        assert!(
            pair[0].end <= pair[1].start,
            "{:?} overlaps {:?}",
            pair[0],
            pair[1]
        );
    }
    assert!(used.last().unwrap().end <= layout.alloc_end_pfn);
    assert!(layout.alloc_end_pfn <= layout.total_pages);
}

fn walk_back(layout: &PvLayout, pfn: u64) -> u64 {
    layout.vaddr_of(pfn)
}

fn build(
    builder: &ElfBuilder,
    config: &PvConfig,
    ramdisk: Option<&[u8]>,
) -> (
    PvLayout,
    PvBootState,
    VecGuestMemory,
    Vec<u64>,
    StartInfoParams,
) {
    let file = builder.build();
    let kernel = ElfKernel::parse(&file).unwrap();
    let layout = PvLayout::new(&kernel, config).unwrap();
    let mfns = scrambled_mfns(layout.total_pages);
    let mut mem = VecGuestMemory::new(layout.total_pages);
    let start = StartInfoParams {
        shared_info_mfn: 0xabcde,
        store_evtchn: 1,
        console_evtchn: 2,
    };
    let boot = layout
        .build(&kernel, ramdisk, &mfns, &start, &mut mem)
        .unwrap();
    (layout, boot, mem, mfns, start)
}

#[test]
fn linux_like_layout_matches_libxenguest() {
    let ramdisk = vec![0x5a; 10_000];
    let config = PvConfig::new(256, 2, "console=hvc0").with_ramdisk(ramdisk.len() as u64);
    let (layout, boot, mem, mfns, start) =
        build(&ElfBuilder::linux_like(), &config, Some(&ramdisk));

    // Worked out by hand from xc_dom_build_image for this kernel (7 pages
    // at 16 MiB, INIT_P2M and MOD_START_PFN set) in 256 MiB:
    assert_eq!(layout.total_pages, 0x10000);
    assert_eq!(layout.kernel.pfns(), 0x1000..0x1007);
    assert_eq!(layout.kernel.vaddr, Some(VIRT_BASE + KERNEL_PADDR));
    assert_eq!(
        (
            layout.start_info_pfn,
            layout.xenstore_pfn,
            layout.console_pfn
        ),
        (0x1007, 0x1008, 0x1009)
    );
    // Mapping to virt_base + 20 MiB: 10 L1s, one L2, L3 and L4.
    assert_eq!(layout.page_tables.pfns(), 0x100a..0x100a + 13);
    assert_eq!(layout.bootstack_pfn, 0x1017);
    assert_eq!(layout.virt_pgtab_end, VIRT_BASE + (20 << 20));
    // Past the mapping: the initrd by pfn, then the p2m list (128 pages) and
    // its tables (L3, L2, L1 for 512 KiB at 512 GiB).
    let ramdisk_segment = layout.ramdisk.unwrap();
    assert_eq!(ramdisk_segment.pfns(), 0x1400..0x1403);
    assert_eq!(ramdisk_segment.vaddr, None);
    assert!(layout.p2m_separate);
    assert_eq!(layout.p2m.pfns(), 0x1403..0x1403 + 128 + 3);
    assert_eq!(layout.p2m.vaddr, Some(0x80_0000_0000));
    assert_eq!(layout.alloc_end_pfn, 0x1403 + 131);
    assert_eq!(layout.hypercall_page_pfn, Some(0x1001));
    assert_eq!(layout.sif_flags, SIF_MOD_START_PFN);
    assert_eq!(
        boot.page_table_pfns,
        (0x100a..0x1017)
            .chain(0x1403 + 128..0x1403 + 131)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        boot.hypercall_page,
        Some(GuestFrame {
            pfn: 0x1001,
            mfn: mfns[0x1001]
        })
    );

    check_build(&layout, &boot, &mem, &mfns, &start, Some(&ramdisk));

    // The kernel's bytes are where its virtual addresses say.
    let m2p = inverse(&mfns);
    let (pfn, _) = walk(&mem, &m2p, boot.vcpu.cr3, VIRT_BASE + KERNEL_PADDR + 0x2000).unwrap();
    assert_eq!(
        mem.read(pfn, 0, 4).unwrap(),
        &[
            1 + (0x2000 % 253) as u8,
            2 + (0x2000 % 253) as u8,
            3 + (0x2000 % 253) as u8,
            4 + (0x2000 % 253) as u8
        ]
    );
    let bss = layout.kernel.pfn + 4;
    assert_eq!(mem.read(bss, 0, 100).unwrap(), &[0xaa; 100]);
    assert!(mem
        .read(bss, 100, 0x3000 - 100)
        .unwrap()
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn without_init_p2m_or_mod_start_pfn_everything_is_in_the_initial_mapping() {
    let builder = ElfBuilder::linux_like()
        .without_note(XEN_ELFNOTE_INIT_P2M)
        .without_note(XEN_ELFNOTE_MOD_START_PFN);
    let ramdisk = vec![0x33; 3 * 4096 + 1];
    let config = PvConfig::new(512, 1, "root=/dev/xvda1 ro").with_ramdisk(ramdisk.len() as u64);

    let (layout, boot, mem, mfns, start) = build(&builder, &config, Some(&ramdisk));

    // Kernel, initrd (4 pages), p2m (512 MiB -> 256 pages), then the rest.
    assert_eq!(layout.ramdisk.unwrap().pfns(), 0x1007..0x100b);
    assert_eq!(layout.ramdisk.unwrap().vaddr, Some(VIRT_BASE + 0x100_7000));
    assert!(!layout.p2m_separate);
    assert_eq!(layout.p2m.pfns(), 0x100b..0x110b);
    assert_eq!(layout.start_info_pfn, 0x110b);
    assert_eq!(layout.sif_flags, 0);
    check_build(&layout, &boot, &mem, &mfns, &start, Some(&ramdisk));
}

#[test]
fn large_memory_grows_the_page_tables_until_they_fit() {
    // 8 GiB without INIT_P2M: a 16 MiB p2m list in the initial mapping.
    let builder = ElfBuilder::linux_like().without_note(XEN_ELFNOTE_INIT_P2M);
    let file = builder.build();
    let kernel = ElfKernel::parse(&file).unwrap();

    let layout = PvLayout::new(&kernel, &PvConfig::new(8192, 4, "")).unwrap();

    assert_eq!(layout.p2m.pages, 4096);
    let mapped = layout.virt_pgtab_end - VIRT_BASE;
    let l1s = mapped.div_ceil(2 << 20);
    assert_eq!(layout.page_tables.pages, 1 + 1 + 1 + l1s);
    assert!(layout.vaddr_of(layout.bootstack_pfn + 1) + 512 * 1024 <= layout.virt_pgtab_end);
}

#[test]
fn too_little_memory_is_refused() {
    let file = ElfBuilder::linux_like().build();
    let kernel = ElfKernel::parse(&file).unwrap();

    // The kernel alone sits at 16 MiB.
    let err = PvLayout::new(&kernel, &PvConfig::new(16, 1, "")).unwrap_err();
    assert!(
        matches!(err, LayoutError::OutOfMemory { what: "kernel", .. }),
        "{err}"
    );

    // 20 MiB holds the kernel but not the 20 MiB initial mapping.
    let err = PvLayout::new(&kernel, &PvConfig::new(20, 1, "")).unwrap_err();
    assert!(
        matches!(err, LayoutError::MappingPastMemory { .. }),
        "{err}"
    );

    assert!(PvLayout::new(&kernel, &PvConfig::new(21, 1, "")).is_ok());
}

#[test]
fn bad_configurations_are_refused() {
    let file = ElfBuilder::linux_like().build();
    let kernel = ElfKernel::parse(&file).unwrap();

    assert_eq!(
        PvLayout::new(&kernel, &PvConfig::new(0, 1, "")),
        Err(LayoutError::BadMemorySize(0))
    );
    assert_eq!(
        PvLayout::new(&kernel, &PvConfig::new(64, 0, "")),
        Err(LayoutError::NoVcpus)
    );
    assert_eq!(
        PvLayout::new(&kernel, &PvConfig::new(64, 1, "x".repeat(1024))),
        Err(LayoutError::CmdLineTooLong(1024))
    );
    assert_eq!(
        PvLayout::new(&kernel, &PvConfig::new(64, 1, "a\0b")),
        Err(LayoutError::CmdLineHasNul)
    );
}

#[test]
fn build_refuses_inputs_that_do_not_match_the_layout() {
    let file = ElfBuilder::linux_like().build();
    let kernel = ElfKernel::parse(&file).unwrap();
    let layout = PvLayout::new(&kernel, &PvConfig::new(64, 1, "").with_ramdisk(10)).unwrap();
    let mfns = scrambled_mfns(layout.total_pages);
    let mut mem = VecGuestMemory::new(layout.total_pages);
    let start = StartInfoParams::default();

    let err = layout
        .build(&kernel, None, &mfns, &start, &mut mem)
        .unwrap_err();
    assert!(matches!(
        err,
        BuildError::RamdiskMismatch {
            expected: Some(10),
            actual: None
        }
    ));

    let err = layout
        .build(&kernel, Some(&[0; 10]), &mfns[1..], &start, &mut mem)
        .unwrap_err();
    assert!(matches!(err, BuildError::MfnListLength { .. }));

    let mut huge = mfns.clone();
    huge[3] = 1 << 41;
    let err = layout
        .build(&kernel, Some(&[0; 10]), &huge, &start, &mut mem)
        .unwrap_err();
    assert!(matches!(err, BuildError::MfnTooLarge { pfn: 3, .. }));

    let mut small = VecGuestMemory::new(16);
    let err = layout
        .build(&kernel, Some(&[0; 10]), &mfns, &start, &mut small)
        .unwrap_err();
    assert!(
        matches!(err, BuildError::Memory { what: "kernel", .. }),
        "{err}"
    );
}

#[test]
fn shared_info_masks_every_legacy_vcpu() {
    let mut page = [0xffu8; 4096];

    init_shared_info(&mut page);

    for vcpu in 0..32 {
        assert_eq!(page[vcpu * 64], 0, "evtchn_upcall_pending");
        assert_eq!(page[vcpu * 64 + 1], 1, "evtchn_upcall_mask");
    }
    assert_eq!(page.iter().filter(|&&b| b != 0).count(), 32);
}
