//! The I/O: serving one validated request against the disk and the
//! frontend's granted pages.
//!
//! Requests are served synchronously, one after the other. The segments
//! of a read or write become [`SharedMemory`] regions of the mapped pages
//! (each its `first_sect..=last_sect` range), which the disk transfers at
//! the request's offset: a raw disk with one `preadv`/`pwritev` on the
//! pages themselves, other disks through a bounce buffer
//! ([`Disk::read_vectored`]). Every page mapped for a request alone is
//! unmapped before the request is answered.

use std::sync::Arc;

use hypercall_abi::platform::{GrantMap, SharedMemory};
use hypercall_abi::xen::blkif::{BlkifRequest, BlkifRequestSegment, BlkifResponse, BlkifStatus};
use hypercall_abi::xen::PAGE_SIZE;
use zerocopy::IntoBytes;

use crate::disk::{BounceBuffer, Disk, DiskError};
use crate::grants::{GrantPages, PageError};
use crate::request::{self, DataRequest, IndirectRequest, IoOp, Limits, Parsed, RequestError};
use crate::stats::Stats;

/// Why a request failed after it was accepted, or was refused.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The request is invalid.
    #[error("invalid request: {0}")]
    Invalid(#[from] RequestError),
    /// Its pages could not be mapped or accessed.
    #[error("{0}")]
    Pages(#[from] PageError),
    /// The disk failed.
    #[error("disk: {0}")]
    Disk(#[from] DiskError),
}

impl ServeError {
    /// The status the request is answered with.
    pub fn status(&self) -> BlkifStatus {
        match self {
            ServeError::Invalid(e) => e.status(),
            ServeError::Disk(DiskError::DiscardUnsupported) => BlkifStatus::Eopnotsupp,
            ServeError::Pages(_) | ServeError::Disk(_) => BlkifStatus::Error,
        }
    }
}

/// Serves the requests of one ring.
pub struct BlockDevice<G: GrantMap, D: Disk> {
    pages: GrantPages<G>,
    disk: Arc<D>,
    limits: Limits,
    /// For disks that cannot do I/O on the granted pages directly.
    bounce: BounceBuffer,
    stats: Arc<Stats>,
}

impl<G: GrantMap, D: Disk> std::fmt::Debug for BlockDevice<G, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockDevice").field("pages", &self.pages).field("limits", &self.limits).finish()
    }
}

impl<G: GrantMap, D: Disk> BlockDevice<G, D> {
    /// A handler for requests checked against `limits`, reaching the
    /// frontend's pages through `pages`.
    pub fn new(pages: GrantPages<G>, disk: Arc<D>, limits: Limits, stats: Arc<Stats>) -> Self {
        BlockDevice { pages, disk, limits, bounce: BounceBuffer::default(), stats }
    }

    /// The grant mapper, e.g. to see how many grants persist.
    pub fn pages(&self) -> &GrantPages<G> {
        &self.pages
    }

    /// Serves one request copied off the ring and returns its response.
    pub fn handle(&mut self, raw: &BlkifRequest) -> BlkifResponse {
        let status = match self.serve(raw) {
            Ok(()) => BlkifStatus::Okay,
            Err(e) => {
                // The guest controls how often this happens: keep it quiet.
                log::debug!("request {:#x} (operation {}) failed: {e}", raw.id, raw.operation);
                Stats::add(&self.stats.errors, 1);
                e.status()
            }
        };
        request::response(raw, status)
    }

    fn serve(&mut self, raw: &BlkifRequest) -> Result<(), ServeError> {
        match request::parse(raw, &self.limits)? {
            Parsed::Data(data) => self.transfer(&data),
            Parsed::Flush => {
                Stats::add(&self.stats.f_req, 1);
                Ok(self.disk.flush()?)
            }
            Parsed::Discard { sector, nr_sectors } => {
                Stats::add(&self.stats.ds_req, 1);
                // parse checked sector + nr_sectors <= disk sectors, so the
                // byte values fit.
                Ok(self.disk.discard(sector * 512, nr_sectors * 512)?)
            }
            Parsed::Indirect(indirect) => {
                let segments = self.fetch_segments(&indirect)?;
                let data = request::indirect_data(&indirect, segments, &self.limits)?;
                self.transfer(&data)
            }
        }
    }

    /// Copies the segments of an indirect request out of its pages, once.
    fn fetch_segments(&mut self, indirect: &IndirectRequest) -> Result<Vec<BlkifRequestSegment>, ServeError> {
        let mut segments = vec![BlkifRequestSegment::default(); indirect.nr_segments];
        let pages = self.pages.map_request(&indirect.pages, false)?;
        let per_page = PAGE_SIZE / std::mem::size_of::<BlkifRequestSegment>();
        for (index, chunk) in segments.chunks_mut(per_page).enumerate() {
            self.pages.read(&pages, index, 0, chunk.as_mut_bytes())?;
        }
        Ok(segments)
    }

    fn transfer(&mut self, data: &DataRequest) -> Result<(), ServeError> {
        let sectors = (data.byte_len() / 512) as u64;
        let reading = data.op == IoOp::Read;
        if data.preflush {
            Stats::add(&self.stats.f_req, 1);
            self.disk.flush()?;
        }
        let refs: Vec<_> = data.segments.iter().map(|s| s.gref).collect();
        let pages = self.pages.map_request(&refs, reading)?;
        let regions = data
            .segments
            .iter()
            .enumerate()
            .map(|(index, segment)| {
                self.pages.region(&pages, index, segment.byte_offset(), segment.byte_len(), reading)
            })
            .collect::<Result<Vec<SharedMemory<'_>>, _>>()?;
        if reading {
            self.disk.read_vectored(data.byte_offset(), &regions, &mut self.bounce)?;
            Stats::add(&self.stats.rd_req, 1);
            Stats::add(&self.stats.rd_sect, sectors);
            return Ok(());
        }
        self.disk.write_vectored(data.byte_offset(), &regions, &mut self.bounce)?;
        // The data is on the disk: unmap before the (possibly slow) flush.
        drop(regions);
        drop(pages);
        if data.postflush {
            self.disk.flush()?;
        }
        Stats::add(&self.stats.wr_req, 1);
        Stats::add(&self.stats.wr_sect, sectors);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use hypercall_abi::xen::blkif::{
        BlkifRequestDiscard, BlkifRequestIndirect, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT,
        BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    };
    use hypercall_abi::xen::GrantRef;

    use super::*;
    use crate::disk::MemDisk;
    use crate::memgrant::MemGrantTable;

    const DOMID: u16 = 7;

    struct Rig {
        table: Arc<MemGrantTable>,
        disk: Arc<MemDisk>,
        device: BlockDevice<MemGrantTable, MemDisk>,
    }

    fn rig(persistent: bool, read_only: bool) -> Rig {
        let table = Arc::new(MemGrantTable::new(DOMID));
        let disk = Arc::new(MemDisk::new(1 << 20, 512, read_only));
        let limits = Limits {
            sectors: disk.size() / 512,
            sector_size: 512,
            read_only,
            discard: !read_only,
            max_indirect_segments: 256,
        };
        let pages = GrantPages::new(Arc::clone(&table), DOMID, persistent.then_some(16));
        let device = BlockDevice::new(pages, Arc::clone(&disk), limits, Arc::default());
        Rig { table, disk, device }
    }

    fn rw(operation: u8, sector: u64, segments: &[BlkifRequestSegment]) -> BlkifRequest {
        let mut request =
            BlkifRequest { operation, nr_segments: segments.len() as u8, id: sector, sector_number: sector, ..Default::default() };
        request.seg[..segments.len()].copy_from_slice(segments);
        request
    }

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add((i * 7 % 251) as u8)).collect()
    }

    #[test]
    fn writes_land_on_the_disk_and_read_back_into_pages() {
        for persistent in [false, true] {
            let mut r = rig(persistent, false);
            let (a, b) = (r.table.grant(true), r.table.grant(true));
            r.table.write_page(a, 512, &pattern(1, 3584));
            r.table.write_page(b, 0, &pattern(2, 1024));

            let write = r.device.handle(&rw(
                BLKIF_OP_WRITE,
                16,
                &[BlkifRequestSegment::new(a, 1, 7), BlkifRequestSegment::new(b, 0, 1)],
            ));
            let c = r.table.grant(true);
            let read = r.device.handle(&rw(BLKIF_OP_READ, 16, &[BlkifRequestSegment::new(c, 0, 7)]));
            let mut back = vec![0u8; 4096];
            r.table.read_page(c, 0, &mut back);

            assert_eq!((write.status, read.status), (BLKIF_RSP_OKAY, BLKIF_RSP_OKAY));
            let expected = [pattern(1, 3584), pattern(2, 512)].concat();
            assert_eq!(r.disk.contents(16 * 512, 4096), expected);
            assert_eq!(back, expected);
        }
    }

    #[test]
    fn partial_page_segments_land_at_their_file_offsets_on_a_raw_disk() {
        for persistent in [false, true] {
            let path = std::env::temp_dir().join(format!("rblkback-device-{}-{persistent}", std::process::id()));
            std::fs::write(&path, vec![0xeeu8; 1 << 20]).unwrap();
            let disk = Arc::new(crate::disk::RawDisk::open(&path, Default::default()).unwrap());
            let table = Arc::new(MemGrantTable::new(DOMID));
            let limits =
                Limits { sectors: 2048, sector_size: 512, read_only: false, discard: true, max_indirect_segments: 256 };
            let pages = GrantPages::new(Arc::clone(&table), DOMID, persistent.then_some(16));
            let mut device = BlockDevice::new(pages, disk, limits, Arc::default());
            // Sectors 3..=5 of one page, 0..=0 of the next, 6..=7 of a third:
            // six sectors written from sector 40.
            let (a, b, c) = (table.grant(true), table.grant(true), table.grant(true));
            table.write_page(a, 0, &pattern(1, 4096));
            table.write_page(b, 0, &pattern(2, 4096));
            table.write_page(c, 0, &pattern(3, 4096));
            let segments =
                [BlkifRequestSegment::new(a, 3, 5), BlkifRequestSegment::new(b, 0, 0), BlkifRequestSegment::new(c, 6, 7)];
            // Read the same sectors back into other pages at other offsets.
            let (d, e) = (table.grant(true), table.grant(true));
            table.write_page(d, 0, &[0x11; 4096]);
            table.write_page(e, 0, &[0x22; 4096]);
            let back = [BlkifRequestSegment::new(d, 2, 6), BlkifRequestSegment::new(e, 7, 7)];

            let write = device.handle(&rw(BLKIF_OP_WRITE, 40, &segments));
            let read = device.handle(&rw(BLKIF_OP_READ, 40, &back));

            assert_eq!((write.status, read.status), (BLKIF_RSP_OKAY, BLKIF_RSP_OKAY));
            let expected = [pattern(1, 4096)[1536..3072].to_vec(), pattern(2, 512), pattern(3, 4096)[3072..].to_vec()].concat();
            let file = std::fs::read(&path).unwrap();
            assert_eq!(file[40 * 512..46 * 512], expected[..], "each segment at its file offset");
            assert!(file[..40 * 512].iter().chain(&file[46 * 512..]).all(|&x| x == 0xee), "nothing else written");
            let (mut page_d, mut page_e) = (vec![0u8; 4096], vec![0u8; 4096]);
            table.read_page(d, 0, &mut page_d);
            table.read_page(e, 0, &mut page_e);
            assert_eq!(page_d, [vec![0x11; 1024], expected[..2560].to_vec(), vec![0x11; 512]].concat());
            assert_eq!(page_e, [vec![0x22; 3584], expected[2560..].to_vec()].concat());
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn indirect_requests_read_their_segments_from_granted_pages() {
        for persistent in [false, true] {
            let mut r = rig(persistent, false);
            let data: Vec<GrantRef> = (0..20).map(|_| r.table.grant(true)).collect();
            let segments: Vec<_> = data.iter().map(|&g| BlkifRequestSegment::new(g, 0, 7)).collect();
            for (i, &g) in data.iter().enumerate() {
                r.table.write_page(g, 0, &pattern(i as u8, 4096));
            }
            let indirect_page = r.table.grant(false);
            r.table.write_page(indirect_page, 0, segments.as_bytes());
            let request = |op| {
                BlkifRequest::from_indirect(BlkifRequestIndirect {
                    operation: BLKIF_OP_INDIRECT,
                    indirect_op: op,
                    nr_segments: 20,
                    id: 42,
                    sector_number: 800,
                    indirect_grefs: [indirect_page, 0, 0, 0, 0, 0, 0, 0],
                    ..Default::default()
                })
            };

            let rsp = r.device.handle(&request(BLKIF_OP_WRITE));

            assert_eq!((rsp.id, rsp.operation, rsp.status), (42, BLKIF_OP_WRITE, BLKIF_RSP_OKAY));
            for i in 0..20 {
                assert_eq!(r.disk.contents((800 + i * 8) * 512, 4096), pattern(i as u8, 4096));
            }
            // A bad segment inside the indirect page fails the request.
            r.table.write_page(indirect_page, 8 * 3, BlkifRequestSegment::new(data[3], 6, 2).as_bytes());
            assert_eq!(r.device.handle(&request(BLKIF_OP_READ)).status, BLKIF_RSP_ERROR);
        }
    }

    #[test]
    fn bad_grants_fail_their_request_and_nothing_else() {
        let mut r = rig(true, false);
        let good = r.table.grant(true);
        let other_domain = MemGrantTable::new(DOMID + 1);
        let foreign = other_domain.grant(true);

        let bad = r.device.handle(&rw(BLKIF_OP_READ, 0, &[BlkifRequestSegment::new(999_999, 0, 7)]));
        let mixed =
            r.device.handle(&rw(BLKIF_OP_READ, 0, &[BlkifRequestSegment::new(good, 0, 7), BlkifRequestSegment::new(foreign + 1000, 0, 7)]));
        let fine = r.device.handle(&rw(BLKIF_OP_READ, 0, &[BlkifRequestSegment::new(good, 0, 7)]));

        assert_eq!((bad.status, mixed.status, fine.status), (BLKIF_RSP_ERROR, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY));
    }

    #[test]
    fn flush_discard_and_read_only_follow_blkback() {
        let mut r = rig(false, false);
        let page = r.table.grant(true);
        r.table.write_page(page, 0, &[0xff; 4096]);
        assert_eq!(r.device.handle(&rw(BLKIF_OP_WRITE, 64, &[BlkifRequestSegment::new(page, 0, 7)])).status, 0);
        let discard = BlkifRequest::from_discard(BlkifRequestDiscard {
            operation: BLKIF_OP_DISCARD,
            id: 9,
            sector_number: 64,
            nr_sectors: 4,
            ..Default::default()
        });

        assert_eq!(r.device.handle(&discard).status, BLKIF_RSP_OKAY);
        assert_eq!(r.device.handle(&rw(BLKIF_OP_FLUSH_DISKCACHE, 0, &[])).status, BLKIF_RSP_OKAY);
        assert_eq!(r.disk.contents(64 * 512, 4096), [vec![0; 2048], vec![0xff; 2048]].concat());

        let mut ro = rig(false, true);
        let page = ro.table.grant(true);
        assert_eq!(ro.device.handle(&rw(BLKIF_OP_WRITE, 0, &[BlkifRequestSegment::new(page, 0, 7)])).status, BLKIF_RSP_ERROR);
        assert_eq!(ro.device.handle(&rw(BLKIF_OP_FLUSH_DISKCACHE, 0, &[])).status, BLKIF_RSP_ERROR);
        assert_eq!(ro.device.handle(&discard).status, BLKIF_RSP_EOPNOTSUPP);
        assert_eq!(ro.device.handle(&rw(BLKIF_OP_READ, 0, &[BlkifRequestSegment::new(page, 0, 7)])).status, BLKIF_RSP_OKAY);
    }
}
