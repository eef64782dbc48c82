//! The boot page tables of a 64-bit PV guest (4 levels, 48-bit virtual
//! addresses), planned and filled the way libxenguest's `count_pgtables` and
//! `setup_pgtables_pv` do (`xg_dom_x86.c`).
//!
//! A *mapping* maps a virtual area to consecutive pfns. It brings the page
//! tables it needs at each level, except those an earlier mapping already
//! has (so two mappings may share an L4, or an L3). The first mapping owns
//! the only L4. Tables sit in consecutive pfns: L4 first, then L3s, L2s, L1s.

use crate::{PAGE_SHIFT, PAGE_SIZE};

/// Page table levels of x86-64.
pub(crate) const LEVELS: usize = 4;
/// Bits a level's index takes from a virtual address.
const LEVEL_SHIFT: u32 = 9;
/// Entries of a page table.
const ENTRIES: u64 = 1 << LEVEL_SHIFT;
/// Canonical virtual addresses are 48 bits wide; the tables see them masked.
pub(crate) const VADDR_MASK: u64 = (1 << 48) - 1;
/// Mappings a PV build makes at most: the initial one and the p2m list's.
const MAX_MAPPINGS: usize = 2;

/// `_PAGE_PRESENT`.
pub const PAGE_PRESENT: u64 = 1 << 0;
/// `_PAGE_RW`.
pub const PAGE_RW: u64 = 1 << 1;
/// `_PAGE_USER`.
pub const PAGE_USER: u64 = 1 << 2;
/// `_PAGE_ACCESSED`.
pub const PAGE_ACCESSED: u64 = 1 << 5;
/// `_PAGE_DIRTY`.
pub const PAGE_DIRTY: u64 = 1 << 6;
/// The machine-address bits of an entry (bits 12-51).
pub const PTE_ADDR_MASK: u64 = ((1 << 52) - 1) & !(PAGE_SIZE - 1);

/// Flags of an L1 entry (a data page), as libxenguest's `lvl_prot[0]`;
/// `PAGE_RW` is dropped for the page-table pages themselves.
pub const L1_PROT: u64 = PAGE_PRESENT | PAGE_RW | PAGE_ACCESSED;
/// Flags of an L2, L3 or L4 entry (pointing to a table), `lvl_prot[1..3]`.
pub const UPPER_PROT: u64 = PAGE_PRESENT | PAGE_RW | PAGE_ACCESSED | PAGE_DIRTY | PAGE_USER;

/// Why a mapping cannot be planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PlanError {
    /// The area maps pfns at or past the end of the guest's memory.
    NotEnoughMemory { last_pfn: u64 },
    /// The area overlaps an earlier mapping's, or the mappings cannot share
    /// their tables (one level's range would contain another's).
    Overlap,
    /// More mappings than a PV build makes.
    TooMany,
}

/// The tables of one level that one mapping brings: `count` tables from
/// `first_pfn`, covering virtual `[from, to]` (inclusive, 48-bit masked).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LevelTables {
    pub from: u64,
    pub to: u64,
    pub first_pfn: u64,
    pub count: u64,
}

/// One mapping: virtual `[from, to]` (inclusive, masked) to pfns from `pfn`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub from: u64,
    pub to: u64,
    pub pfn: u64,
    /// Index 0 holds the L1 tables, 3 the L4.
    pub levels: [LevelTables; LEVELS],
}

impl Mapping {
    /// Page-table pages the mapping brings.
    pub fn nr_tables(&self) -> u64 {
        self.levels.iter().map(|l| l.count).sum()
    }

    /// pfns of its tables: they start with its highest level's.
    pub fn table_pfns(&self) -> std::ops::Range<u64> {
        let first = self.levels[LEVELS - 1].first_pfn;
        first..first + self.nr_tables()
    }
}

/// Bits of virtual address one table at level `level` (0 = L1) covers.
const fn table_span_bits(level: usize) -> u32 {
    PAGE_SHIFT + (level as u32 + 1) * LEVEL_SHIFT
}

/// Bits of virtual address one entry at level `level` covers.
const fn entry_span_bits(level: usize) -> u32 {
    PAGE_SHIFT + level as u32 * LEVEL_SHIFT
}

/// The set of mappings, in the order they were added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PageTables {
    maps: Vec<Mapping>,
}

impl PageTables {
    pub fn mappings(&self) -> &[Mapping] {
        &self.maps
    }

    /// Plans a mapping of virtual `[from, to]` (inclusive) to pfns from
    /// `pfn`, with its tables from `first_table_pfn`, in a guest of
    /// `total_pages` pages. Does not add it: see [`Self::push`].
    pub fn plan(
        &self,
        from: u64,
        to: u64,
        pfn: u64,
        first_table_pfn: u64,
        total_pages: u64,
    ) -> Result<Mapping, PlanError> {
        if self.maps.len() >= MAX_MAPPINGS {
            return Err(PlanError::TooMany);
        }
        let (from, to) = (from & VADDR_MASK, to & VADDR_MASK);
        if to < from {
            return Err(PlanError::Overlap);
        }
        let last_pfn = pfn.saturating_add((to - from) >> PAGE_SHIFT);
        if last_pfn >= total_pages {
            return Err(PlanError::NotEnoughMemory { last_pfn });
        }
        if self.maps.iter().any(|m| from < m.to && to > m.from) {
            return Err(PlanError::Overlap);
        }

        let mut map = Mapping {
            from,
            to,
            pfn,
            levels: Default::default(),
        };
        let mut tables = 0u64;
        for level in (0..LEVELS).rev() {
            let this = &mut map.levels[level];
            this.first_pfn = first_table_pfn + tables;
            if level == LEVELS - 1 {
                // The first mapping's L4 serves all.
                if self.maps.is_empty() {
                    this.from = 0;
                    this.to = VADDR_MASK;
                    this.count = 1;
                }
                tables += this.count;
                continue;
            }
            let mask = (1u64 << table_span_bits(level)) - 1;
            let (mut lo, mut hi) = (from & !mask, to | mask);
            for earlier in &self.maps {
                let other = earlier.levels[level];
                if other.count == 0 {
                    continue;
                }
                if lo >= other.from && hi <= other.to {
                    // Entirely covered by the earlier mapping's tables.
                    (lo, hi) = (0, 0);
                    break;
                }
                if lo < other.from && hi > other.to {
                    // Would need tables on both sides of the earlier ones.
                    return Err(PlanError::Overlap);
                }
                if (other.from..=other.to).contains(&lo) {
                    lo = other.to + 1;
                }
                if (other.from..=other.to).contains(&hi) {
                    hi = other.from.checked_sub(1).ok_or(PlanError::Overlap)?;
                }
            }
            if lo < hi {
                this.from = lo;
                this.to = hi;
                this.count = ((hi - lo) >> table_span_bits(level)) + 1;
            }
            tables += this.count;
        }
        Ok(map)
    }

    /// Adds a planned mapping.
    pub fn push(&mut self, map: Mapping) {
        self.maps.push(map);
    }

    /// Whether `pfn` holds a page table of any mapping; such pages are mapped
    /// read-only, as a PV guest's page tables must be.
    pub fn is_table_pfn(&self, pfn: u64) -> bool {
        self.maps.iter().any(|m| m.table_pfns().contains(&pfn))
    }

    /// Fills the tables: calls `entry(table_pfn, index, pfn, flags)` for
    /// every present entry, where `pfn` is the pseudo-physical frame the
    /// entry points to (the caller turns it into a machine address).
    pub fn for_each_entry<E>(
        &self,
        mut entry: impl FnMut(u64, usize, u64, u64) -> Result<(), E>,
    ) -> Result<(), E> {
        for level in (0..LEVELS).rev() {
            let shift = entry_span_bits(level);
            for map in &self.maps {
                let table = map.levels[level];
                if table.count == 0 {
                    continue;
                }
                for child_map in &self.maps {
                    // What this level's entries point to: the next level's
                    // tables, or for L1 entries the mapped area itself.
                    let (from, to, first_pfn) = if level > 0 {
                        let child = child_map.levels[level - 1];
                        if child.count == 0 {
                            continue;
                        }
                        (child.from, child.to, child.first_pfn)
                    } else {
                        (child_map.from, child_map.to, child_map.pfn)
                    };
                    if from >= table.to || to <= table.from {
                        continue;
                    }
                    let lo = from.max(table.from);
                    let hi = to.min(table.to);
                    let first = (lo - table.from) >> shift;
                    let last = (hi - table.from) >> shift;
                    let start_pfn = first_pfn + ((lo - from) >> shift);
                    for slot in first..=last {
                        let pfn = start_pfn + (slot - first);
                        let flags = if level == 0 {
                            if self.is_table_pfn(pfn) {
                                L1_PROT & !PAGE_RW
                            } else {
                                L1_PROT
                            }
                        } else {
                            UPPER_PROT
                        };
                        let table_pfn = table.first_pfn + slot / ENTRIES;
                        // slot % 512 < 512.
                        entry(table_pfn, (slot % ENTRIES) as usize, pfn, flags)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIRT_BASE: u64 = 0xffff_ffff_8000_0000;

    #[test]
    fn a_small_kernel_mapping_needs_one_table_per_level() {
        let tables = PageTables::default();

        // 4 MiB from virt_base: one L1 per 2 MiB.
        let map = tables
            .plan(VIRT_BASE, VIRT_BASE + (4 << 20) - 1, 0, 100, 2048)
            .unwrap();

        let counts: Vec<u64> = map.levels.iter().map(|l| l.count).collect();
        assert_eq!(counts, [2, 1, 1, 1]);
        assert_eq!(map.levels[3].first_pfn, 100, "L4 first");
        assert_eq!(map.levels[2].first_pfn, 101);
        assert_eq!(map.levels[1].first_pfn, 102);
        assert_eq!(map.levels[0].first_pfn, 103);
        assert_eq!(map.table_pfns(), 100..105);
    }

    #[test]
    fn a_mapping_past_the_memory_is_refused() {
        let tables = PageTables::default();

        // 8 MiB from pfn 0 ends at pfn 2047: 2048 pages are enough, 2047 not.
        assert!(tables
            .plan(VIRT_BASE, VIRT_BASE + (8 << 20) - 1, 0, 0, 2048)
            .is_ok());
        assert_eq!(
            tables.plan(VIRT_BASE, VIRT_BASE + (8 << 20) - 1, 0, 0, 2047),
            Err(PlanError::NotEnoughMemory { last_pfn: 2047 })
        );
    }

    #[test]
    fn a_second_mapping_shares_the_l4_and_brings_its_own_lower_tables() {
        let mut tables = PageTables::default();
        let kernel = tables
            .plan(VIRT_BASE, VIRT_BASE + (4 << 20) - 1, 0, 100, 1 << 20)
            .unwrap();
        tables.push(kernel);

        let p2m = tables
            .plan(
                0x80_0000_0000,
                0x80_0000_0000 + 0x10_0000 - 1,
                5000,
                5256,
                1 << 20,
            )
            .unwrap();

        let counts: Vec<u64> = p2m.levels.iter().map(|l| l.count).collect();
        assert_eq!(counts, [1, 1, 1, 0]);
        assert_eq!(p2m.table_pfns(), 5256..5259);
    }

    #[test]
    fn entries_point_down_the_levels_and_tables_are_read_only() {
        let mut tables = PageTables::default();
        let map = tables
            .plan(VIRT_BASE, VIRT_BASE + (4 << 20) - 1, 0, 100, 2048)
            .unwrap();
        tables.push(map);
        let mut entries = std::collections::BTreeMap::new();

        tables
            .for_each_entry(|table, slot, pfn, flags| -> Result<(), ()> {
                assert!(entries.insert((table, slot), (pfn, flags)).is_none());
                Ok(())
            })
            .unwrap();

        // L4[511] -> L3 (pfn 101); L3[510] -> L2 (102); L2[0..2] -> L1s.
        assert_eq!(entries[&(100, 511)], (101, UPPER_PROT));
        assert_eq!(entries[&(101, 510)], (102, UPPER_PROT));
        assert_eq!(entries[&(102, 0)], (103, UPPER_PROT));
        assert_eq!(entries[&(102, 1)], (104, UPPER_PROT));
        assert_eq!(entries[&(103, 0)], (0, L1_PROT));
        assert_eq!(entries[&(103, 100)], (100, L1_PROT & !PAGE_RW));
        assert_eq!(entries[&(104, 511)], (1023, L1_PROT));
        assert_eq!(entries.len(), 1 + 1 + 2 + 1024);
    }
}
