//! The 64-bit ELF kernel and its Xen ELF notes (`xen/include/public/elfnote.h`),
//! with the checks and address calculations of Xen's libelf
//! (`libelf-dominfo.c`: `elf_xen_parse`, `elf_xen_note_check`,
//! `elf_xen_addr_calc_check`).
//!
//! The kernel file is untrusted input: every offset and size is
//! bounds-checked, arithmetic is checked, and every loop is bounded by the
//! file's size.

use std::ops::Range;

use thiserror::Error;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `EM_X86_64`.
pub const EM_X86_64: u16 = 62;
/// `PT_LOAD`.
pub const PT_LOAD: u32 = 1;
/// `PT_NOTE`.
pub const PT_NOTE: u32 = 4;
/// `SHT_NOTE`.
pub const SHT_NOTE: u32 = 7;
/// `PF_X`.
pub const PF_X: u32 = 1;
/// `PF_W`.
pub const PF_W: u32 = 2;
/// `PF_R`.
pub const PF_R: u32 = 4;

const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
/// Notes examined in one image at most (libelf's `ELF_MAX_TOTAL_NOTE_COUNT`).
const MAX_TOTAL_NOTES: usize = 65536;

/// `XEN_ELFNOTE_ENTRY`: virtual entry point (numeric).
pub const XEN_ELFNOTE_ENTRY: u32 = 1;
/// `XEN_ELFNOTE_HYPERCALL_PAGE`: virtual address of the hypercall page.
pub const XEN_ELFNOTE_HYPERCALL_PAGE: u32 = 2;
/// `XEN_ELFNOTE_VIRT_BASE`: virtual address the kernel's pfn 0 maps to.
pub const XEN_ELFNOTE_VIRT_BASE: u32 = 3;
/// `XEN_ELFNOTE_PADDR_OFFSET`: offset of ELF paddrs from virtual addresses.
pub const XEN_ELFNOTE_PADDR_OFFSET: u32 = 4;
/// `XEN_ELFNOTE_XEN_VERSION`: the Xen ABI the kernel expects (string).
pub const XEN_ELFNOTE_XEN_VERSION: u32 = 5;
/// `XEN_ELFNOTE_GUEST_OS`: the guest operating system (string).
pub const XEN_ELFNOTE_GUEST_OS: u32 = 6;
/// `XEN_ELFNOTE_GUEST_VERSION`: the guest's version (string).
pub const XEN_ELFNOTE_GUEST_VERSION: u32 = 7;
/// `XEN_ELFNOTE_LOADER`: the loader the kernel expects (string).
pub const XEN_ELFNOTE_LOADER: u32 = 8;
/// `XEN_ELFNOTE_PAE_MODE`: PAE mode of a 32-bit kernel (string).
pub const XEN_ELFNOTE_PAE_MODE: u32 = 9;
/// `XEN_ELFNOTE_FEATURES`: `|`-separated feature names, `!` marking
/// required ones (string).
pub const XEN_ELFNOTE_FEATURES: u32 = 10;
/// `XEN_ELFNOTE_BSD_SYMTAB`: load the BSD symbol table (string); ignored.
pub const XEN_ELFNOTE_BSD_SYMTAB: u32 = 11;
/// `XEN_ELFNOTE_HV_START_LOW`: lowest address the hypervisor may use (32-bit
/// PAE guests only).
pub const XEN_ELFNOTE_HV_START_LOW: u32 = 12;
/// `XEN_ELFNOTE_L1_MFN_VALID`: not used by the domain builder.
pub const XEN_ELFNOTE_L1_MFN_VALID: u32 = 13;
/// `XEN_ELFNOTE_SUSPEND_CANCEL`: the guest supports suspend cancellation.
pub const XEN_ELFNOTE_SUSPEND_CANCEL: u32 = 14;
/// `XEN_ELFNOTE_INIT_P2M`: virtual address for a separately mapped p2m list.
pub const XEN_ELFNOTE_INIT_P2M: u32 = 15;
/// `XEN_ELFNOTE_MOD_START_PFN`: the initrd may be left unmapped and passed
/// by frame number.
pub const XEN_ELFNOTE_MOD_START_PFN: u32 = 16;
/// `XEN_ELFNOTE_SUPPORTED_FEATURES`: bitmap of supported features.
pub const XEN_ELFNOTE_SUPPORTED_FEATURES: u32 = 17;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: 32-bit physical entry point for PVH.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// `XENFEAT_writable_page_tables`.
pub const XENFEAT_WRITABLE_PAGE_TABLES: u32 = 0;
/// `XENFEAT_writable_descriptor_tables`.
pub const XENFEAT_WRITABLE_DESCRIPTOR_TABLES: u32 = 1;
/// `XENFEAT_auto_translated_physmap`.
pub const XENFEAT_AUTO_TRANSLATED_PHYSMAP: u32 = 2;
/// `XENFEAT_supervisor_mode_kernel`.
pub const XENFEAT_SUPERVISOR_MODE_KERNEL: u32 = 3;
/// `XENFEAT_pae_pgdir_above_4gb`.
pub const XENFEAT_PAE_PGDIR_ABOVE_4GB: u32 = 4;
/// `XENFEAT_hvm_callback_vector`.
pub const XENFEAT_HVM_CALLBACK_VECTOR: u32 = 8;
/// `XENFEAT_dom0`.
pub const XENFEAT_DOM0: u32 = 11;

/// The feature names `XEN_ELFNOTE_FEATURES` may use: the ones libelf knows
/// (`elf_xen_feature_names`); others are ignored, or refused if required.
const FEATURE_NAMES: &[(&str, u32)] = &[
    ("writable_page_tables", XENFEAT_WRITABLE_PAGE_TABLES),
    (
        "writable_descriptor_tables",
        XENFEAT_WRITABLE_DESCRIPTOR_TABLES,
    ),
    ("auto_translated_physmap", XENFEAT_AUTO_TRANSLATED_PHYSMAP),
    ("supervisor_mode_kernel", XENFEAT_SUPERVISOR_MODE_KERNEL),
    ("pae_pgdir_above_4gb", XENFEAT_PAE_PGDIR_ABOVE_4GB),
    ("hvm_callback_vector", XENFEAT_HVM_CALLBACK_VECTOR),
    ("dom0", XENFEAT_DOM0),
];

/// The ELF file header (`Elf64_Ehdr`), little-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Elf64Ehdr {
    /// Magic, class, data encoding, version, ABI.
    pub e_ident: [u8; 16],
    /// Object file type.
    pub e_type: U16,
    /// Machine, [`EM_X86_64`].
    pub e_machine: U16,
    /// Object file version.
    pub e_version: U32,
    /// Entry point virtual address.
    pub e_entry: U64,
    /// Program header table offset.
    pub e_phoff: U64,
    /// Section header table offset.
    pub e_shoff: U64,
    /// Processor-specific flags.
    pub e_flags: U32,
    /// Size of this header.
    pub e_ehsize: U16,
    /// Size of a program header.
    pub e_phentsize: U16,
    /// Number of program headers.
    pub e_phnum: U16,
    /// Size of a section header.
    pub e_shentsize: U16,
    /// Number of section headers.
    pub e_shnum: U16,
    /// Section name string table index.
    pub e_shstrndx: U16,
}
const _: () = assert!(core::mem::size_of::<Elf64Ehdr>() == 64);

/// A program header (`Elf64_Phdr`), little-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Elf64Phdr {
    /// Segment type.
    pub p_type: U32,
    /// Segment flags (`PF_*`).
    pub p_flags: U32,
    /// Offset in the file.
    pub p_offset: U64,
    /// Virtual address.
    pub p_vaddr: U64,
    /// Physical address.
    pub p_paddr: U64,
    /// Bytes in the file.
    pub p_filesz: U64,
    /// Bytes in memory.
    pub p_memsz: U64,
    /// Alignment.
    pub p_align: U64,
}
const _: () = assert!(core::mem::size_of::<Elf64Phdr>() == 56);

/// A section header (`Elf64_Shdr`), little-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Elf64Shdr {
    /// Name (index into the section name table).
    pub sh_name: U32,
    /// Section type.
    pub sh_type: U32,
    /// Section flags.
    pub sh_flags: U64,
    /// Virtual address.
    pub sh_addr: U64,
    /// Offset in the file.
    pub sh_offset: U64,
    /// Size in bytes.
    pub sh_size: U64,
    /// Link to another section.
    pub sh_link: U32,
    /// Extra information.
    pub sh_info: U32,
    /// Alignment.
    pub sh_addralign: U64,
    /// Entry size for tables.
    pub sh_entsize: U64,
}
const _: () = assert!(core::mem::size_of::<Elf64Shdr>() == 64);

/// A note header (`Elf64_Nhdr`), little-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct Elf64Nhdr {
    /// Length of the name, including its NUL.
    pub n_namesz: U32,
    /// Length of the descriptor.
    pub n_descsz: U32,
    /// Note type.
    pub n_type: U32,
}
const _: () = assert!(core::mem::size_of::<Elf64Nhdr>() == 12);

/// Why a kernel ELF image was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    /// The magic is missing or the file is shorter than an ELF header.
    #[error("the kernel is not an ELF image")]
    NotElf,
    /// Not a 64-bit little-endian x86-64 ELF.
    #[error("the kernel is not a 64-bit little-endian x86-64 ELF image (class {class}, data {data}, machine {machine}); only x86-64 guests are supported")]
    UnsupportedElf {
        /// `e_ident[EI_CLASS]`.
        class: u8,
        /// `e_ident[EI_DATA]`.
        data: u8,
        /// `e_machine`.
        machine: u16,
    },
    /// A header table does not fit in the file or has an odd entry size.
    #[error("the ELF {table} header table ({count} entries of {entry_size} bytes at offset {offset}) does not fit a {file_len} byte file")]
    BadTable {
        /// `"program"` or `"section"`.
        table: &'static str,
        /// Offset of the table.
        offset: u64,
        /// Number of entries.
        count: u16,
        /// Declared size of an entry.
        entry_size: u16,
        /// Length of the file.
        file_len: usize,
    },
    /// A loadable segment or note region is malformed.
    #[error("ELF program header {index} is malformed: {reason}")]
    BadSegment {
        /// Index of the program header.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// No `PT_LOAD` segment to load.
    #[error("the kernel ELF has no loadable segment")]
    NoLoadableSegments,
    /// The segments add up to more than twice their span (libelf's guard
    /// against images that make the loader copy without end).
    #[error("the kernel ELF's segments add up to {total} bytes, more than twice the {span} bytes they span")]
    SegmentsTooLarge {
        /// Sum of the segments' memory sizes.
        total: u64,
        /// Span from the lowest to the highest physical address.
        span: u64,
    },
    /// A note runs past the end of its segment or section.
    #[error("an ELF note at file offset {offset:#x} runs past the end of its region")]
    TruncatedNote {
        /// File offset of the note header.
        offset: u64,
    },
    /// More notes than libelf would ever examine.
    #[error("the kernel ELF has more than {MAX_TOTAL_NOTES} notes")]
    TooManyNotes,
    /// A numeric Xen note has a descriptor size other than 1, 2, 4 or 8.
    #[error(
        "Xen ELF note {note_type} has a {size} byte value; numeric notes are 1, 2, 4 or 8 bytes"
    )]
    BadNumericNote {
        /// The `XEN_ELFNOTE_*` type.
        note_type: u32,
        /// The descriptor size.
        size: u32,
    },
    /// `XEN_ELFNOTE_FEATURES` requires a feature libelf does not know.
    #[error("the kernel requires the Xen feature `{0}`, which the domain builder does not know")]
    UnknownRequiredFeature(String),
    /// The image carries no Xen ELF note.
    #[error("not a Xen kernel: the ELF image has no Xen ELF notes; build it with CONFIG_XEN_PV (PV) or CONFIG_PVH (PVH)")]
    NotXenKernel,
    /// The notes name neither the generic loader nor Linux.
    #[error("the kernel is built for loader {loader:?} and guest OS {guest_os:?}; only the generic loader or Linux can be booted as PV")]
    UnsupportedLoader {
        /// `XEN_ELFNOTE_LOADER`.
        loader: String,
        /// `XEN_ELFNOTE_GUEST_OS`.
        guest_os: String,
    },
    /// The notes name another Xen ABI than 3.0.
    #[error("the kernel is built for Xen ABI {0:?}, not xen-3.0")]
    UnsupportedXenVersion(String),
    /// `PADDR_OFFSET` without `VIRT_BASE`.
    #[error("the kernel sets XEN_ELFNOTE_PADDR_OFFSET without XEN_ELFNOTE_VIRT_BASE")]
    PaddrOffsetWithoutVirtBase,
    /// The addresses from the notes are inconsistent.
    #[error("the kernel's addresses are out of bounds: virt_base {virt_base:#x}, kernel {kstart:#x}-{kend:#x}, entry {entry:#x}")]
    AddressesOutOfBounds {
        /// Virtual base.
        virt_base: u64,
        /// Start of the kernel's virtual range.
        kstart: u64,
        /// End of the kernel's virtual range.
        kend: u64,
        /// Entry point.
        entry: u64,
    },
    /// `INIT_P2M` lies inside the kernel.
    #[error("the kernel asks for its p2m list at {0:#x}, inside the kernel image")]
    P2mBaseInKernel(u64),
    /// The hypercall page lies outside the kernel image.
    #[error("the kernel's hypercall page {0:#x} is not inside the kernel image")]
    HypercallPageOutOfBounds(u64),
    /// The kernel requires a feature a domU cannot have.
    #[error(
        "the kernel requires the Xen feature `{0}`, which an unprivileged PV domain cannot have"
    )]
    UnsupportedRequiredFeature(&'static str),
    /// A PVH boot of a kernel without `XEN_ELFNOTE_PHYS32_ENTRY`.
    #[error("the kernel has no XEN_ELFNOTE_PHYS32_ENTRY, so it cannot boot as PVH; build it with CONFIG_PVH or boot it as PV")]
    NotPvhCapable,
    /// `PHYS32_ENTRY` does not fit 32 bits.
    #[error("the kernel's PVH entry point {0:#x} does not fit 32 bits")]
    Phys32EntryTooLarge(u64),
}

/// A loadable segment (`PT_LOAD` with any of R, W or X set, as libelf's
/// `elf_phdr_is_loadable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// Physical address (`p_paddr`).
    pub paddr: u64,
    /// Virtual address (`p_vaddr`).
    pub vaddr: u64,
    /// File offset of the data.
    pub offset: u64,
    /// Bytes taken from the file.
    pub filesz: u64,
    /// Bytes in memory; those past `filesz` are zero.
    pub memsz: u64,
    /// `PF_*`.
    pub flags: u32,
}

/// Xen features a kernel supports and requires (one 32-bit submap:
/// `XENFEAT_NR_SUBMAPS` is 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenFeatures {
    /// Bit `n` set: `XENFEAT` number `n` is supported.
    pub supported: u32,
    /// Bit `n` set: `XENFEAT` number `n` is required (and so supported).
    pub required: u32,
}

impl XenFeatures {
    /// Adds the features of a `XEN_ELFNOTE_FEATURES` string such as
    /// `"!writable_page_tables|pae_pgdir_above_4gb"`.
    ///
    /// Unknown names are ignored unless required (`!`), which is an error.
    pub fn parse_into(&mut self, features: &str) -> Result<(), ElfError> {
        for token in features.split('|').filter(|t| !t.is_empty()) {
            let (required, name) = match token.strip_prefix('!') {
                Some(name) => (true, name),
                None => (false, token),
            };
            match FEATURE_NAMES.iter().find(|(known, _)| *known == name) {
                Some(&(_, bit)) => {
                    self.supported |= 1 << bit;
                    if required {
                        self.required |= 1 << bit;
                    }
                }
                None if required => return Err(ElfError::UnknownRequiredFeature(name.into())),
                None => log::debug!("ELF: ignoring unknown Xen feature {name:?}"),
            }
        }
        Ok(())
    }

    /// Whether `XENFEAT` number `bit` is supported.
    pub const fn supports(&self, bit: u32) -> bool {
        bit < 32 && self.supported & (1 << bit) != 0
    }

    /// Whether `XENFEAT` number `bit` is required.
    pub const fn requires(&self, bit: u32) -> bool {
        bit < 32 && self.required & (1 << bit) != 0
    }
}

/// The Xen ELF notes of a kernel, as found (unset notes are `None`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XenNotes {
    /// Number of Xen notes found.
    pub count: usize,
    /// `XEN_ELFNOTE_ENTRY`.
    pub entry: Option<u64>,
    /// `XEN_ELFNOTE_HYPERCALL_PAGE`.
    pub hypercall_page: Option<u64>,
    /// `XEN_ELFNOTE_VIRT_BASE`.
    pub virt_base: Option<u64>,
    /// `XEN_ELFNOTE_PADDR_OFFSET`.
    pub paddr_offset: Option<u64>,
    /// `XEN_ELFNOTE_XEN_VERSION`.
    pub xen_version: Option<String>,
    /// `XEN_ELFNOTE_GUEST_OS`.
    pub guest_os: Option<String>,
    /// `XEN_ELFNOTE_GUEST_VERSION`.
    pub guest_version: Option<String>,
    /// `XEN_ELFNOTE_LOADER`.
    pub loader: Option<String>,
    /// `XEN_ELFNOTE_PAE_MODE`.
    pub pae_mode: Option<String>,
    /// `XEN_ELFNOTE_FEATURES` and `XEN_ELFNOTE_SUPPORTED_FEATURES` combined.
    pub features: XenFeatures,
    /// `XEN_ELFNOTE_BSD_SYMTAB` was `"yes"` (the symbol table is not loaded).
    pub bsd_symtab: bool,
    /// `XEN_ELFNOTE_HV_START_LOW`.
    pub hv_start_low: Option<u64>,
    /// `XEN_ELFNOTE_SUSPEND_CANCEL`.
    pub suspend_cancel: Option<u64>,
    /// `XEN_ELFNOTE_INIT_P2M`.
    pub init_p2m: Option<u64>,
    /// `XEN_ELFNOTE_MOD_START_PFN`.
    pub mod_start_pfn: Option<u64>,
    /// `XEN_ELFNOTE_PHYS32_ENTRY`.
    pub phys32_entry: Option<u64>,
}

impl XenNotes {
    fn parse_note(&mut self, note_type: u32, desc: &[u8]) -> Result<(), ElfError> {
        let numeric = || -> Result<u64, ElfError> {
            let mut bytes = [0u8; 8];
            match desc.len() {
                1 | 2 | 4 | 8 => {
                    bytes[..desc.len()].copy_from_slice(desc);
                    Ok(u64::from_le_bytes(bytes))
                }
                size => Err(ElfError::BadNumericNote {
                    note_type,
                    size: u32::try_from(size).unwrap_or(u32::MAX),
                }),
            }
        };
        let string = || {
            let end = desc.iter().position(|&b| b == 0).unwrap_or(desc.len());
            String::from_utf8_lossy(&desc[..end]).into_owned()
        };
        match note_type {
            XEN_ELFNOTE_ENTRY => self.entry = Some(numeric()?),
            XEN_ELFNOTE_HYPERCALL_PAGE => self.hypercall_page = Some(numeric()?),
            XEN_ELFNOTE_VIRT_BASE => self.virt_base = Some(numeric()?),
            XEN_ELFNOTE_PADDR_OFFSET => self.paddr_offset = Some(numeric()?),
            XEN_ELFNOTE_XEN_VERSION => self.xen_version = Some(string()),
            XEN_ELFNOTE_GUEST_OS => self.guest_os = Some(string()),
            XEN_ELFNOTE_GUEST_VERSION => self.guest_version = Some(string()),
            XEN_ELFNOTE_LOADER => self.loader = Some(string()),
            XEN_ELFNOTE_PAE_MODE => self.pae_mode = Some(string()),
            XEN_ELFNOTE_FEATURES => self.features.parse_into(&string())?,
            XEN_ELFNOTE_BSD_SYMTAB => self.bsd_symtab = string() == "yes",
            XEN_ELFNOTE_HV_START_LOW => self.hv_start_low = Some(numeric()?),
            XEN_ELFNOTE_SUSPEND_CANCEL => self.suspend_cancel = Some(numeric()?),
            XEN_ELFNOTE_INIT_P2M => self.init_p2m = Some(numeric()?),
            XEN_ELFNOTE_MOD_START_PFN => self.mod_start_pfn = Some(numeric()?),
            XEN_ELFNOTE_SUPPORTED_FEATURES => {
                // An array of 32-bit submaps, of which Xen 4.17 has one.
                if desc.len() % 4 != 0 {
                    return Err(ElfError::BadNumericNote {
                        note_type,
                        size: u32::try_from(desc.len()).unwrap_or(u32::MAX),
                    });
                }
                if let Some(first) = desc.get(..4) {
                    self.features.supported |=
                        u32::from_le_bytes([first[0], first[1], first[2], first[3]]);
                }
            }
            XEN_ELFNOTE_PHYS32_ENTRY => self.phys32_entry = Some(numeric()?),
            other => {
                log::debug!("ELF: ignoring Xen note type {other:#x}");
                return Ok(());
            }
        }
        self.count += 1;
        Ok(())
    }
}

/// What the builder computes from the notes for one kind of domain
/// (libelf's `struct elf_dom_parms` after `elf_xen_addr_calc_check`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelParams {
    /// Virtual address of pfn 0 (0 for PVH).
    pub virt_base: u64,
    /// `virt_base` minus the ELF physical address of pfn 0.
    pub elf_paddr_offset: u64,
    /// What to add to an ELF physical address to get its virtual address.
    pub virt_offset: u64,
    /// Start of the kernel's range (virtual for PV, physical for PVH).
    pub kstart: u64,
    /// End (exclusive) of the kernel's range.
    pub kend: u64,
    /// Entry point: virtual for PV, the 32-bit physical PVH entry for PVH.
    pub entry: u64,
    /// Virtual address of the hypercall page (PV only).
    pub hypercall_page: Option<u64>,
    /// Virtual address of a separately mapped p2m list (`INIT_P2M`), if any
    /// and if valid (page aligned, below `virt_base`).
    pub p2m_base: Option<u64>,
    /// The initrd may be placed unmapped and passed by pfn (`MOD_START_PFN`).
    pub unmapped_initrd: bool,
    /// The kernel's features.
    pub features: XenFeatures,
    /// Lowest ELF physical address of the loadable segments.
    pub pstart: u64,
    /// Highest ELF physical address (exclusive) of the loadable segments.
    pub pend: u64,
}

/// A parsed 64-bit x86 kernel ELF image, borrowing the file's bytes.
#[derive(Clone, Debug)]
pub struct ElfKernel<'a> {
    data: &'a [u8],
    entry: u64,
    segments: Vec<LoadSegment>,
    pstart: u64,
    pend: u64,
    notes: XenNotes,
}

impl<'a> ElfKernel<'a> {
    /// Parses and validates the ELF headers, the loadable segments and the
    /// Xen notes (from `PT_NOTE` segments, or `SHT_NOTE` sections if the
    /// segments hold none).
    pub fn parse(data: &'a [u8]) -> Result<Self, ElfError> {
        let (ehdr, _) = Elf64Ehdr::read_from_prefix(data).map_err(|_| ElfError::NotElf)?;
        if !ehdr.e_ident.starts_with(crate::image::ELF_MAGIC) {
            return Err(ElfError::NotElf);
        }
        let (class, encoding, machine) = (ehdr.e_ident[4], ehdr.e_ident[5], ehdr.e_machine.get());
        if class != ELFCLASS64 || encoding != ELFDATA2LSB || machine != EM_X86_64 {
            return Err(ElfError::UnsupportedElf {
                class,
                data: encoding,
                machine,
            });
        }

        let phdrs = table::<Elf64Phdr>(
            data,
            "program",
            ehdr.e_phoff.get(),
            ehdr.e_phnum.get(),
            ehdr.e_phentsize.get(),
        )?;
        let shdrs = table::<Elf64Shdr>(
            data,
            "section",
            ehdr.e_shoff.get(),
            ehdr.e_shnum.get(),
            ehdr.e_shentsize.get(),
        )?;

        let mut segments = Vec::new();
        for (index, phdr) in phdrs.iter().enumerate() {
            let flags = phdr.p_flags.get();
            if phdr.p_type.get() != PT_LOAD || flags & (PF_R | PF_W | PF_X) == 0 {
                continue;
            }
            let segment = LoadSegment {
                paddr: phdr.p_paddr.get(),
                vaddr: phdr.p_vaddr.get(),
                offset: phdr.p_offset.get(),
                filesz: phdr.p_filesz.get(),
                memsz: phdr.p_memsz.get(),
                flags,
            };
            let bad = |reason| ElfError::BadSegment { index, reason };
            region(data, segment.offset, segment.filesz)
                .ok_or_else(|| bad("its data lies outside the file"))?;
            if segment.filesz > segment.memsz {
                return Err(bad("it has more bytes in the file than in memory"));
            }
            segment
                .paddr
                .checked_add(segment.memsz)
                .ok_or_else(|| bad("its physical address range overflows"))?;
            segments.push(segment);
        }
        let pstart = segments.iter().map(|s| s.paddr).min();
        let pend = segments.iter().map(|s| s.paddr + s.memsz).max();
        let (Some(pstart), Some(pend)) = (pstart, pend) else {
            return Err(ElfError::NoLoadableSegments);
        };
        let span = (pend - pstart).div_ceil(crate::PAGE_SIZE) * crate::PAGE_SIZE;
        let total = segments
            .iter()
            .try_fold(0u64, |sum, s| sum.checked_add(s.memsz))
            .unwrap_or(u64::MAX);
        if total > span.saturating_mul(2) {
            return Err(ElfError::SegmentsTooLarge { total, span });
        }

        let mut notes = XenNotes::default();
        let mut seen = 0usize;
        for (index, phdr) in phdrs.iter().enumerate() {
            // Some binutils leave p_offset 0 in note segments (libelf skips them).
            if phdr.p_type.get() != PT_NOTE || phdr.p_offset.get() == 0 {
                continue;
            }
            let range = region(data, phdr.p_offset.get(), phdr.p_filesz.get()).ok_or(
                ElfError::BadSegment {
                    index,
                    reason: "its notes lie outside the file",
                },
            )?;
            parse_notes(data, range, &mut notes, &mut seen)?;
        }
        if notes.count == 0 {
            for shdr in shdrs.iter().skip(1) {
                if shdr.sh_type.get() != SHT_NOTE {
                    continue;
                }
                // A note section outside the file is skipped, as libelf does.
                if let Some(range) = region(data, shdr.sh_offset.get(), shdr.sh_size.get()) {
                    parse_notes(data, range, &mut notes, &mut seen)?;
                }
            }
        }

        Ok(Self {
            data,
            entry: ehdr.e_entry.get(),
            segments,
            pstart,
            pend,
            notes,
        })
    }

    /// `e_entry`.
    pub fn elf_entry(&self) -> u64 {
        self.entry
    }

    /// The loadable segments.
    pub fn segments(&self) -> &[LoadSegment] {
        &self.segments
    }

    /// The Xen notes.
    pub fn notes(&self) -> &XenNotes {
        &self.notes
    }

    /// Physical range `[pstart, pend)` the loadable segments span.
    pub fn paddr_range(&self) -> Range<u64> {
        self.pstart..self.pend
    }

    /// The layout parameters for booting the kernel as a 64-bit PV domU, with
    /// libelf's checks (Xen notes present, generic or Linux loader, Xen ABI
    /// 3.0, consistent addresses) and libxenguest's (no required `dom0` or
    /// `auto_translated_physmap`).
    pub fn pv_params(&self) -> Result<KernelParams, ElfError> {
        let notes = &self.notes;
        if notes.count == 0 {
            return Err(ElfError::NotXenKernel);
        }
        let loader = notes.loader.clone().unwrap_or_default();
        let guest_os = notes.guest_os.clone().unwrap_or_default();
        if !loader.starts_with("generic") && !guest_os.starts_with("linux") {
            return Err(ElfError::UnsupportedLoader { loader, guest_os });
        }
        let xen_version = notes.xen_version.clone().unwrap_or_default();
        if !xen_version.starts_with("xen-3.0") {
            return Err(ElfError::UnsupportedXenVersion(xen_version));
        }
        if notes.paddr_offset.is_some() && notes.virt_base.is_none() {
            return Err(ElfError::PaddrOffsetWithoutVirtBase);
        }
        if notes.bsd_symtab {
            log::warn!("ELF: the kernel asks for its BSD symbol table, which is not loaded");
        }
        let virt_base = notes.virt_base.unwrap_or(0);
        let elf_paddr_offset = notes.paddr_offset.unwrap_or(0);
        let entry = notes.entry.unwrap_or(self.entry);
        let params = self.params(virt_base, elf_paddr_offset, entry)?;

        if let Some(hypercall) = notes.hypercall_page {
            if !(params.kstart..params.kend).contains(&hypercall) {
                return Err(ElfError::HypercallPageOutOfBounds(hypercall));
            }
        }
        for (bit, name) in [
            (XENFEAT_DOM0, "dom0"),
            (XENFEAT_AUTO_TRANSLATED_PHYSMAP, "auto_translated_physmap"),
        ] {
            if notes.features.requires(bit) {
                return Err(ElfError::UnsupportedRequiredFeature(name));
            }
        }
        Ok(KernelParams {
            hypercall_page: notes.hypercall_page,
            ..params
        })
    }

    /// The layout parameters for booting the kernel as PVH: physical
    /// addresses (virtual base 0) and the `PHYS32_ENTRY` entry point.
    pub fn pvh_params(&self) -> Result<KernelParams, ElfError> {
        let entry = self.notes.phys32_entry.ok_or(ElfError::NotPvhCapable)?;
        if entry > u64::from(u32::MAX - 1) {
            return Err(ElfError::Phys32EntryTooLarge(entry));
        }
        if self.notes.features.requires(XENFEAT_DOM0) {
            return Err(ElfError::UnsupportedRequiredFeature("dom0"));
        }
        self.params(0, 0, entry)
    }

    fn params(
        &self,
        virt_base: u64,
        elf_paddr_offset: u64,
        entry: u64,
    ) -> Result<KernelParams, ElfError> {
        let virt_offset = virt_base.wrapping_sub(elf_paddr_offset);
        let out_of_bounds = |kstart, kend| ElfError::AddressesOutOfBounds {
            virt_base,
            kstart,
            kend,
            entry,
        };
        let kstart = self.pstart.wrapping_add(virt_offset);
        let kend = self.pend.wrapping_add(virt_offset);
        if kstart > kend || entry < kstart || entry > kend || virt_base > kstart {
            return Err(out_of_bounds(kstart, kend));
        }
        let p2m_base = self.notes.init_p2m;
        if let Some(base) = p2m_base {
            if (kstart..kend).contains(&base) {
                return Err(ElfError::P2mBaseInKernel(base));
            }
        }
        // libxenguest ignores an INIT_P2M above the kernel or unaligned
        // (xc_dom_build_image) and puts the list in the initial mapping.
        let p2m_base = p2m_base.filter(|&base| base < virt_base && base % crate::PAGE_SIZE == 0);
        Ok(KernelParams {
            virt_base,
            elf_paddr_offset,
            virt_offset,
            kstart,
            kend,
            entry,
            hypercall_page: None,
            p2m_base,
            unmapped_initrd: self.notes.mod_start_pfn.is_some_and(|v| v != 0),
            features: self.notes.features,
            pstart: self.pstart,
            pend: self.pend,
        })
    }

    /// Loads the segments into the kernel's memory: calls `write` with each
    /// segment's offset from [`Self::paddr_range`]'s start and its file bytes.
    /// The bytes past `filesz` are left alone; the caller zeroes the range
    /// beforehand.
    pub fn load<E>(&self, mut write: impl FnMut(u64, &[u8]) -> Result<(), E>) -> Result<(), E> {
        for segment in &self.segments {
            // Checked in parse().
            let Some(range) = region(self.data, segment.offset, segment.filesz) else {
                continue;
            };
            write(segment.paddr - self.pstart, &self.data[range])?;
        }
        Ok(())
    }
}

/// `[offset, offset + len)` as a range of `data`, if it lies inside.
fn region(data: &[u8], offset: u64, len: u64) -> Option<Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= data.len()).then_some(start..end)
}

/// Reads a header table of `count` entries of `entry_size` bytes.
fn table<T: FromBytes + KnownLayout + Immutable>(
    data: &[u8],
    name: &'static str,
    offset: u64,
    count: u16,
    entry_size: u16,
) -> Result<Vec<T>, ElfError> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let bad = || ElfError::BadTable {
        table: name,
        offset,
        count,
        entry_size,
        file_len: data.len(),
    };
    if usize::from(entry_size) < core::mem::size_of::<T>() {
        return Err(bad());
    }
    let range = region(data, offset, u64::from(count) * u64::from(entry_size)).ok_or_else(bad)?;
    data[range]
        .chunks_exact(usize::from(entry_size))
        .map(|entry| {
            T::read_from_prefix(entry)
                .map(|(t, _)| t)
                .map_err(|_| bad())
        })
        .collect()
}

/// Walks the notes in `range`, feeding the Xen ones to `notes`.
fn parse_notes(
    data: &[u8],
    range: Range<usize>,
    notes: &mut XenNotes,
    seen: &mut usize,
) -> Result<(), ElfError> {
    let align4 = |n: u32| (u64::from(n) + 3) & !3;
    let region = &data[range.clone()];
    let mut at = 0usize;
    // Every note is at least its 12-byte header long.
    while at < region.len() {
        if *seen >= MAX_TOTAL_NOTES {
            return Err(ElfError::TooManyNotes);
        }
        *seen += 1;
        let truncated = || ElfError::TruncatedNote {
            offset: (range.start + at) as u64,
        };
        let (header, _) = Elf64Nhdr::read_from_prefix(&region[at..]).map_err(|_| truncated())?;
        let name_at = at as u64 + 12;
        let desc_at = name_at + align4(header.n_namesz.get());
        let desc_end = desc_at + u64::from(header.n_descsz.get());
        let next = desc_at + align4(header.n_descsz.get());
        if desc_end > region.len() as u64 {
            return Err(truncated());
        }
        // In bounds: desc_end <= region.len().
        let name = &region[name_at as usize..name_at as usize + header.n_namesz.get() as usize];
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        if name == b"Xen" {
            notes.parse_note(
                header.n_type.get(),
                &region[desc_at as usize..desc_end as usize],
            )?;
        }
        at = usize::try_from(next).unwrap_or(usize::MAX);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
