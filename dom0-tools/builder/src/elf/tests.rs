use super::*;

/// Builds small synthetic x86-64 ELF kernels.
#[derive(Clone, Debug)]
pub(crate) struct ElfBuilder {
    pub entry: u64,
    /// (paddr, vaddr, file bytes, memsz)
    pub segments: Vec<(u64, u64, Vec<u8>, u64)>,
    /// (name, type, descriptor)
    pub notes: Vec<(&'static [u8], u32, Vec<u8>)>,
    /// Put the notes in a `SHT_NOTE` section instead of a `PT_NOTE` segment.
    pub notes_in_section: bool,
}

pub(crate) const VIRT_BASE: u64 = 0xffff_ffff_8000_0000;
pub(crate) const KERNEL_PADDR: u64 = 0x100_0000;

pub(crate) fn str_note(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

impl ElfBuilder {
    /// A Linux-like PV and PVH kernel: text at 16 MiB with a hypercall page,
    /// bss after it, the usual notes.
    pub(crate) fn linux_like() -> Self {
        let text: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 253) as u8 + 1).collect();
        let text_len = text.len() as u64;
        Self {
            entry: VIRT_BASE + KERNEL_PADDR + 0x40,
            segments: vec![
                (KERNEL_PADDR, VIRT_BASE + KERNEL_PADDR, text, text_len),
                (
                    KERNEL_PADDR + 0x4000,
                    VIRT_BASE + KERNEL_PADDR + 0x4000,
                    vec![0xaa; 100],
                    0x3000,
                ),
            ],
            notes: vec![
                (b"Xen", XEN_ELFNOTE_GUEST_OS, str_note("linux")),
                (b"Xen", XEN_ELFNOTE_GUEST_VERSION, str_note("2.6")),
                (b"Xen", XEN_ELFNOTE_XEN_VERSION, str_note("xen-3.0")),
                (
                    b"Xen",
                    XEN_ELFNOTE_VIRT_BASE,
                    VIRT_BASE.to_le_bytes().to_vec(),
                ),
                (
                    b"Xen",
                    XEN_ELFNOTE_PADDR_OFFSET,
                    0u64.to_le_bytes().to_vec(),
                ),
                (
                    b"Xen",
                    XEN_ELFNOTE_ENTRY,
                    (VIRT_BASE + KERNEL_PADDR + 0x40).to_le_bytes().to_vec(),
                ),
                (
                    b"Xen",
                    XEN_ELFNOTE_HYPERCALL_PAGE,
                    (VIRT_BASE + KERNEL_PADDR + 0x1000).to_le_bytes().to_vec(),
                ),
                (
                    b"Xen",
                    XEN_ELFNOTE_FEATURES,
                    str_note("!writable_page_tables|pae_pgdir_above_4gb"),
                ),
                (
                    b"Xen",
                    XEN_ELFNOTE_SUPPORTED_FEATURES,
                    (1u32 << 8).to_le_bytes().to_vec(),
                ),
                (b"Xen", XEN_ELFNOTE_PAE_MODE, str_note("yes")),
                (
                    b"Xen",
                    XEN_ELFNOTE_L1_MFN_VALID,
                    vec![1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
                ),
                (
                    b"Xen",
                    XEN_ELFNOTE_SUSPEND_CANCEL,
                    1u32.to_le_bytes().to_vec(),
                ),
                (b"Xen", XEN_ELFNOTE_LOADER, str_note("generic")),
                (
                    b"Xen",
                    XEN_ELFNOTE_INIT_P2M,
                    0x80_0000_0000u64.to_le_bytes().to_vec(),
                ),
                (
                    b"Xen",
                    XEN_ELFNOTE_MOD_START_PFN,
                    1u32.to_le_bytes().to_vec(),
                ),
                (
                    b"Xen",
                    XEN_ELFNOTE_PHYS32_ENTRY,
                    ((KERNEL_PADDR + 0x80) as u32).to_le_bytes().to_vec(),
                ),
                (b"GNU", 3, vec![0xde, 0xad, 0xbe, 0xef]),
            ],
            notes_in_section: false,
        }
    }

    pub(crate) fn without_note(mut self, note_type: u32) -> Self {
        self.notes
            .retain(|(name, t, _)| !(*name == b"Xen" && *t == note_type));
        self
    }

    pub(crate) fn with_note(mut self, note_type: u32, desc: Vec<u8>) -> Self {
        self = self.without_note(note_type);
        self.notes.push((b"Xen", note_type, desc));
        self
    }

    pub(crate) fn build(&self) -> Vec<u8> {
        let mut notes = Vec::new();
        for (name, note_type, desc) in &self.notes {
            let mut name = name.to_vec();
            name.push(0);
            notes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            notes.extend_from_slice(&note_type.to_le_bytes());
            notes.extend_from_slice(&name);
            notes.resize(notes.len().next_multiple_of(4), 0);
            notes.extend_from_slice(desc);
            notes.resize(notes.len().next_multiple_of(4), 0);
        }

        let nr_phdrs = self.segments.len() + usize::from(!self.notes_in_section);
        let phoff = 64u64;
        let notes_off = phoff + 56 * nr_phdrs as u64;
        let mut data_off = notes_off + notes.len() as u64;
        let mut body = notes.clone();
        let mut phdrs = Vec::new();
        for (paddr, vaddr, bytes, memsz) in &self.segments {
            phdrs.push(Elf64Phdr {
                p_type: PT_LOAD.into(),
                p_flags: (PF_R | PF_X).into(),
                p_offset: data_off.into(),
                p_vaddr: (*vaddr).into(),
                p_paddr: (*paddr).into(),
                p_filesz: (bytes.len() as u64).into(),
                p_memsz: (*memsz).into(),
                p_align: 4096u64.into(),
            });
            body.extend_from_slice(bytes);
            data_off += bytes.len() as u64;
        }
        if !self.notes_in_section {
            phdrs.push(Elf64Phdr {
                p_type: PT_NOTE.into(),
                p_flags: PF_R.into(),
                p_offset: notes_off.into(),
                p_vaddr: 0u64.into(),
                p_paddr: 0u64.into(),
                p_filesz: (notes.len() as u64).into(),
                p_memsz: (notes.len() as u64).into(),
                p_align: 4u64.into(),
            });
        }
        let shoff = data_off;
        let shdrs = if self.notes_in_section {
            let null = Elf64Shdr::new_zeroed();
            let mut note = Elf64Shdr::new_zeroed();
            note.sh_type = SHT_NOTE.into();
            note.sh_offset = notes_off.into();
            note.sh_size = (notes.len() as u64).into();
            vec![null, note]
        } else {
            Vec::new()
        };

        let mut ehdr = Elf64Ehdr::new_zeroed();
        ehdr.e_ident[..4].copy_from_slice(crate::image::ELF_MAGIC);
        ehdr.e_ident[4] = ELFCLASS64;
        ehdr.e_ident[5] = ELFDATA2LSB;
        ehdr.e_ident[6] = 1;
        ehdr.e_type = 2u16.into();
        ehdr.e_machine = EM_X86_64.into();
        ehdr.e_version = 1u32.into();
        ehdr.e_entry = self.entry.into();
        ehdr.e_phoff = phoff.into();
        ehdr.e_ehsize = 64u16.into();
        ehdr.e_phentsize = 56u16.into();
        ehdr.e_phnum = (phdrs.len() as u16).into();
        if !shdrs.is_empty() {
            ehdr.e_shoff = shoff.into();
            ehdr.e_shentsize = 64u16.into();
            ehdr.e_shnum = (shdrs.len() as u16).into();
        }

        let mut file = ehdr.as_bytes().to_vec();
        for phdr in &phdrs {
            file.extend_from_slice(phdr.as_bytes());
        }
        file.extend_from_slice(&body);
        for shdr in &shdrs {
            file.extend_from_slice(shdr.as_bytes());
        }
        file
    }
}

use zerocopy::FromZeros;

#[test]
fn linux_like_notes_are_all_read() {
    let file = ElfBuilder::linux_like().build();

    let elf = ElfKernel::parse(&file).unwrap();
    let notes = elf.notes();

    assert_eq!(notes.guest_os.as_deref(), Some("linux"));
    assert_eq!(notes.guest_version.as_deref(), Some("2.6"));
    assert_eq!(notes.xen_version.as_deref(), Some("xen-3.0"));
    assert_eq!(notes.loader.as_deref(), Some("generic"));
    assert_eq!(notes.pae_mode.as_deref(), Some("yes"));
    assert_eq!(notes.virt_base, Some(VIRT_BASE));
    assert_eq!(notes.paddr_offset, Some(0));
    assert_eq!(notes.entry, Some(VIRT_BASE + KERNEL_PADDR + 0x40));
    assert_eq!(
        notes.hypercall_page,
        Some(VIRT_BASE + KERNEL_PADDR + 0x1000)
    );
    assert_eq!(notes.init_p2m, Some(0x80_0000_0000));
    assert_eq!(notes.mod_start_pfn, Some(1));
    assert_eq!(notes.suspend_cancel, Some(1));
    assert_eq!(notes.phys32_entry, Some(KERNEL_PADDR + 0x80));
    assert_eq!(
        notes.features,
        XenFeatures {
            supported: 1 << XENFEAT_WRITABLE_PAGE_TABLES
                | 1 << XENFEAT_PAE_PGDIR_ABOVE_4GB
                | 1 << XENFEAT_HVM_CALLBACK_VECTOR,
            required: 1 << XENFEAT_WRITABLE_PAGE_TABLES,
        }
    );
    assert_eq!(notes.count, 15, "L1_MFN_VALID is not counted");
    assert_eq!(elf.paddr_range(), KERNEL_PADDR..KERNEL_PADDR + 0x7000);
    assert_eq!(elf.segments().len(), 2);
}

#[test]
fn pv_params_follow_libelf() {
    let file = ElfBuilder::linux_like().build();
    let elf = ElfKernel::parse(&file).unwrap();

    let params = elf.pv_params().unwrap();

    assert_eq!(params.virt_base, VIRT_BASE);
    assert_eq!(params.virt_offset, VIRT_BASE);
    assert_eq!(params.kstart, VIRT_BASE + KERNEL_PADDR);
    assert_eq!(params.kend, VIRT_BASE + KERNEL_PADDR + 0x7000);
    assert_eq!(params.entry, VIRT_BASE + KERNEL_PADDR + 0x40);
    assert_eq!(
        params.hypercall_page,
        Some(VIRT_BASE + KERNEL_PADDR + 0x1000)
    );
    assert_eq!(params.p2m_base, Some(0x80_0000_0000));
    assert!(params.unmapped_initrd);
}

#[test]
fn pvh_params_use_physical_addresses() {
    let file = ElfBuilder::linux_like().build();
    let elf = ElfKernel::parse(&file).unwrap();

    let params = elf.pvh_params().unwrap();

    assert_eq!(params.virt_base, 0);
    assert_eq!(params.kstart, KERNEL_PADDR);
    assert_eq!(params.kend, KERNEL_PADDR + 0x7000);
    assert_eq!(params.entry, KERNEL_PADDR + 0x80);
    assert_eq!(params.hypercall_page, None);

    let no_pvh = ElfBuilder::linux_like()
        .without_note(XEN_ELFNOTE_PHYS32_ENTRY)
        .build();
    assert_eq!(
        ElfKernel::parse(&no_pvh).unwrap().pvh_params(),
        Err(ElfError::NotPvhCapable)
    );
}

#[test]
fn notes_in_a_section_are_found_when_no_segment_has_them() {
    let mut builder = ElfBuilder::linux_like();
    builder.notes_in_section = true;
    let file = builder.build();

    let elf = ElfKernel::parse(&file).unwrap();

    assert_eq!(elf.notes().virt_base, Some(VIRT_BASE));
    assert!(elf.pv_params().is_ok());
}

#[test]
fn defaults_apply_without_optional_notes() {
    let file = ElfBuilder::linux_like()
        .without_note(XEN_ELFNOTE_ENTRY)
        .without_note(XEN_ELFNOTE_PADDR_OFFSET)
        .without_note(XEN_ELFNOTE_INIT_P2M)
        .without_note(XEN_ELFNOTE_MOD_START_PFN)
        .build();

    let params = ElfKernel::parse(&file).unwrap().pv_params().unwrap();

    assert_eq!(params.entry, VIRT_BASE + KERNEL_PADDR + 0x40, "e_entry");
    assert_eq!(params.elf_paddr_offset, 0);
    assert_eq!(params.p2m_base, None);
    assert!(!params.unmapped_initrd);
}

#[test]
fn an_init_p2m_above_virt_base_is_ignored() {
    let file = ElfBuilder::linux_like()
        .with_note(
            XEN_ELFNOTE_INIT_P2M,
            0xffff_ffff_c000_0000u64.to_le_bytes().to_vec(),
        )
        .build();

    let params = ElfKernel::parse(&file).unwrap().pv_params().unwrap();

    assert_eq!(params.p2m_base, None);
}

#[test]
fn inconsistent_kernels_are_refused() {
    let cases: Vec<(ElfBuilder, ElfError)> = vec![
        (
            ElfBuilder::linux_like()
                .with_note(XEN_ELFNOTE_GUEST_OS, str_note("netbsd"))
                .with_note(XEN_ELFNOTE_LOADER, str_note("other")),
            ElfError::UnsupportedLoader {
                loader: "other".into(),
                guest_os: "netbsd".into(),
            },
        ),
        (
            ElfBuilder::linux_like().with_note(XEN_ELFNOTE_XEN_VERSION, str_note("xen-2.0")),
            ElfError::UnsupportedXenVersion("xen-2.0".into()),
        ),
        (
            ElfBuilder::linux_like().without_note(XEN_ELFNOTE_VIRT_BASE),
            ElfError::PaddrOffsetWithoutVirtBase,
        ),
        (
            ElfBuilder::linux_like().with_note(XEN_ELFNOTE_ENTRY, 0x1234u64.to_le_bytes().to_vec()),
            ElfError::AddressesOutOfBounds {
                virt_base: VIRT_BASE,
                kstart: VIRT_BASE + KERNEL_PADDR,
                kend: VIRT_BASE + KERNEL_PADDR + 0x7000,
                entry: 0x1234,
            },
        ),
        (
            ElfBuilder::linux_like().with_note(
                XEN_ELFNOTE_INIT_P2M,
                (VIRT_BASE + KERNEL_PADDR).to_le_bytes().to_vec(),
            ),
            ElfError::P2mBaseInKernel(VIRT_BASE + KERNEL_PADDR),
        ),
        (
            ElfBuilder::linux_like().with_note(XEN_ELFNOTE_FEATURES, str_note("!dom0")),
            ElfError::UnsupportedRequiredFeature("dom0"),
        ),
        (
            ElfBuilder::linux_like()
                .with_note(XEN_ELFNOTE_FEATURES, str_note("!auto_translated_physmap")),
            ElfError::UnsupportedRequiredFeature("auto_translated_physmap"),
        ),
        (
            ElfBuilder::linux_like()
                .with_note(XEN_ELFNOTE_HYPERCALL_PAGE, VIRT_BASE.to_le_bytes().to_vec()),
            ElfError::HypercallPageOutOfBounds(VIRT_BASE),
        ),
    ];
    for (builder, expected) in cases {
        let file = builder.build();
        let result = ElfKernel::parse(&file).and_then(|elf| elf.pv_params());
        assert_eq!(result, Err(expected));
    }
}

#[test]
fn malformed_notes_and_features_are_refused() {
    let bad_number = ElfBuilder::linux_like()
        .with_note(XEN_ELFNOTE_VIRT_BASE, vec![0; 3])
        .build();
    assert_eq!(
        ElfKernel::parse(&bad_number).unwrap_err(),
        ElfError::BadNumericNote {
            note_type: XEN_ELFNOTE_VIRT_BASE,
            size: 3
        }
    );

    let unknown_required = ElfBuilder::linux_like()
        .with_note(
            XEN_ELFNOTE_FEATURES,
            str_note("writable_page_tables|!no_such_thing"),
        )
        .build();
    assert_eq!(
        ElfKernel::parse(&unknown_required).unwrap_err(),
        ElfError::UnknownRequiredFeature("no_such_thing".into())
    );

    let unknown_optional = ElfBuilder::linux_like()
        .with_note(
            XEN_ELFNOTE_FEATURES,
            str_note("no_such_thing|writable_page_tables"),
        )
        .build();
    assert!(ElfKernel::parse(&unknown_optional).is_ok());
}

#[test]
fn kernels_without_notes_or_segments_are_refused() {
    let mut no_notes = ElfBuilder::linux_like();
    no_notes.notes.clear();
    let file = no_notes.build();
    assert_eq!(
        ElfKernel::parse(&file).unwrap().pv_params(),
        Err(ElfError::NotXenKernel)
    );

    let mut no_segments = ElfBuilder::linux_like();
    no_segments.segments.clear();
    assert_eq!(
        ElfKernel::parse(&no_segments.build()).unwrap_err(),
        ElfError::NoLoadableSegments
    );
}

#[test]
fn headers_pointing_outside_the_file_are_refused() {
    let file = ElfBuilder::linux_like().build();

    let mut phoff = file.clone();
    phoff[32..40].copy_from_slice(&(file.len() as u64).to_le_bytes());
    assert!(matches!(
        ElfKernel::parse(&phoff),
        Err(ElfError::BadTable {
            table: "program",
            ..
        })
    ));

    let mut segment = file.clone();
    // p_filesz of the first program header.
    segment[64 + 32..64 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        ElfKernel::parse(&segment),
        Err(ElfError::BadSegment { index: 0, .. })
    ));

    let mut machine = file.clone();
    machine[18] = 3;
    assert!(matches!(
        ElfKernel::parse(&machine),
        Err(ElfError::UnsupportedElf { machine: 3, .. })
    ));

    assert_eq!(ElfKernel::parse(&file[..40]).unwrap_err(), ElfError::NotElf);
}

#[test]
fn load_writes_each_segment_at_its_offset() {
    let builder = ElfBuilder::linux_like();
    let file = builder.build();
    let elf = ElfKernel::parse(&file).unwrap();
    let mut image = vec![0u8; 0x7000];

    elf.load(|offset, bytes| -> Result<(), ()> {
        image[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
        Ok(())
    })
    .unwrap();

    assert_eq!(
        &image[..builder.segments[0].2.len()],
        &builder.segments[0].2[..]
    );
    assert_eq!(&image[0x4000..0x4064], &[0xaa; 100][..]);
    assert!(image[0x4064..].iter().all(|&b| b == 0));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

    /// Random byte changes anywhere in a valid kernel never make the parser
    /// panic, loop or read out of bounds.
    #[test]
    fn mutated_kernels_never_panic(
        edits in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..16),
        cut in proptest::option::of(0usize..2048),
    ) {
        let mut file = ElfBuilder::linux_like().build();
        for (at, byte) in edits {
            let len = file.len();
            file[at % len] = byte;
        }
        if let Some(cut) = cut {
            file.truncate(cut);
        }
        if let Ok(elf) = ElfKernel::parse(&file) {
            let _ = elf.pv_params();
            let _ = elf.pvh_params();
            let _ = elf.load(|_, _| -> Result<(), ()> { Ok(()) });
        }
    }

    /// Mutated kernels that still parse lay out and build without panicking.
    #[test]
    fn mutated_kernels_lay_out_and_build_without_panicking(
        edits in proptest::collection::vec((0usize..1200, proptest::prelude::any::<u8>()), 1..6),
    ) {
        use crate::pv::{PvConfig, PvLayout, StartInfoParams};
        use crate::pvh::{PvhConfig, PvhLayout};
        let mut file = ElfBuilder::linux_like().build();
        for (at, byte) in edits {
            let len = file.len();
            file[at % len] = byte;
        }
        let Ok(elf) = ElfKernel::parse(&file) else { return Ok(()) };
        if let Ok(layout) = PvLayout::new(&elf, &PvConfig::new(24, 1, "x").with_ramdisk(5000)) {
            let mfns: Vec<u64> = (0..layout.total_pages).collect();
            let mut mem = crate::VecGuestMemory::new(layout.total_pages);
            let _ = layout.build(&elf, Some(&[1; 5000]), &mfns, &StartInfoParams::default(), &mut mem);
        }
        if let Ok(layout) = PvhLayout::new(&elf, &PvhConfig::new(24, 1, "x")) {
            let mut mem = crate::VecGuestMemory::new(layout.total_pages);
            let _ = layout.build(&elf, None, 0, &mut mem);
        }
    }

    /// Mutations concentrated on the headers and notes.
    #[test]
    fn mutated_headers_never_panic(
        edits in proptest::collection::vec((0usize..600, proptest::prelude::any::<u8>()), 1..8),
    ) {
        let mut file = ElfBuilder::linux_like().build();
        for (at, byte) in edits {
            let len = file.len();
            file[at % len] = byte;
        }
        if let Ok(elf) = ElfKernel::parse(&file) {
            let _ = elf.pv_params();
            let _ = elf.pvh_params();
        }
    }
}
