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
use crate::grants::{GrantPages, PageError, RequestPages};
use crate::request::{self, DataRequest, IndirectRequest, IoOp, Limits, Parsed, RequestError};
use crate::stats::Stats;
use crate::sys;
use crate::uring::{self, Uring};

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
    /// Batched I/O for disks that give a file descriptor
    /// ([`Disk::direct_fd`]); `None`: every request is served on its own.
    uring: Option<Uring>,
}

/// A read or write of a batch, mapped and waiting for its I/O: its pages
/// stay mapped, and its iovecs describe them, until the batch completes.
struct Prepared<M> {
    /// Position of the request in the batch.
    index: usize,
    _pages: RequestPages<M>,
    iovecs: Vec<libc::iovec>,
    fd: std::os::fd::RawFd,
    offset: u64,
    write: bool,
    sectors: u64,
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
        BlockDevice { pages, disk, limits, bounce: BounceBuffer::default(), stats, uring: None }
    }

    /// Serves the reads and writes of each batch
    /// ([`handle_batch`](BlockDevice::handle_batch)) with one io_uring
    /// submission, for disks that allow it ([`Disk::direct_fd`]). Where
    /// io_uring is missing or forbidden the device serves requests one by
    /// one, as without this call.
    #[must_use]
    pub fn batched(mut self) -> Self {
        match Uring::new() {
            Ok(uring) => self.uring = Some(uring),
            Err(e) => log::info!("io_uring unavailable ({e}); serving requests one by one"),
        }
        self
    }

    /// Whether [`handle_batch`](BlockDevice::handle_batch) submits the
    /// reads and writes of a batch together (io_uring on a disk that
    /// allows it), rather than serving them one by one.
    pub fn batches_io(&self) -> bool {
        self.uring.is_some() && self.disk.batches_io()
    }

    /// The device's counters (shared by its queues).
    pub fn stats_arc(&self) -> &Arc<Stats> {
        &self.stats
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

    /// Serves the requests of one batch and appends their responses, in
    /// order, to `responses`. Reads and writes of a disk with a file
    /// descriptor go to the kernel together (io_uring); a flush or a
    /// barrier first waits for every read and write before it in the
    /// batch, so it covers them; the rest is served on its own, as by
    /// [`handle`](BlockDevice::handle).
    pub fn handle_batch(&mut self, requests: &[BlkifRequest], responses: &mut Vec<BlkifResponse>) {
        if self.uring.is_none() {
            responses.extend(requests.iter().map(|raw| self.handle(raw)));
            return;
        }
        let mut statuses = vec![BlkifStatus::Okay; requests.len()];
        let mut pending = Vec::new();
        self.pages.begin_batch();
        for (index, raw) in requests.iter().enumerate() {
            let result = match self.prepare(index, raw) {
                Ok(Some(prepared)) => {
                    pending.push(prepared);
                    Ok(())
                }
                Ok(None) => {
                    self.run_pending(&mut pending, &mut statuses);
                    self.serve(raw)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                statuses[index] = self.failed(raw, &e);
            }
        }
        self.run_pending(&mut pending, &mut statuses);
        self.pages.end_batch();
        responses.extend(requests.iter().zip(statuses).map(|(raw, status)| request::response(raw, status)));
    }

    fn failed(&self, raw: &BlkifRequest, e: &ServeError) -> BlkifStatus {
        log::debug!("request {:#x} (operation {}) failed: {e}", raw.id, raw.operation);
        Stats::add(&self.stats.errors, 1);
        e.status()
    }

    /// Maps a plain read or write for the batch's I/O. `None`: the request
    /// is served on its own (a flush, discard or barrier, a disk without a
    /// file descriptor, regions O_DIRECT cannot take).
    fn prepare(&mut self, index: usize, raw: &BlkifRequest) -> Result<Option<Prepared<G::Mapped>>, ServeError> {
        let data = match request::parse(raw, &self.limits)? {
            Parsed::Data(data) if !data.preflush && !data.postflush => data,
            Parsed::Indirect(indirect) => {
                let segments = self.fetch_segments(&indirect)?;
                let data = request::indirect_data(&indirect, segments, &self.limits)?;
                if data.preflush || data.postflush {
                    return Ok(None);
                }
                data
            }
            Parsed::Data(_) | Parsed::Flush | Parsed::Discard { .. } => return Ok(None),
        };
        let write = data.op != IoOp::Read;
        let refs: Vec<_> = data.segments.iter().map(|s| s.gref).collect();
        let pages = self.pages.map_request(&refs, !write)?;
        let (fd, iovecs) = {
            let regions = data
                .segments
                .iter()
                .enumerate()
                .map(|(i, segment)| self.pages.region(&pages, i, segment.byte_offset(), segment.byte_len(), !write))
                .collect::<Result<Vec<SharedMemory<'_>>, _>>()?;
            let Some(fd) = self.disk.direct_fd(data.byte_offset(), &regions, write)? else {
                // Served at once, on the pages just mapped: reads and
                // writes in flight together have no order among them.
                transfer_regions(&*self.disk, &mut self.bounce, &self.stats, &data, &regions)?;
                return Ok(Some(Prepared {
                    index,
                    _pages: pages,
                    iovecs: Vec::new(),
                    fd: -1,
                    offset: 0,
                    write,
                    sectors: 0,
                }));
            };
            // Raw pointers: no Rust reference to the pages is made, the
            // kernel reads or writes them.
            let iovecs =
                regions.iter().map(|r| libc::iovec { iov_base: r.as_ptr().cast(), iov_len: r.len() }).collect();
            (fd, iovecs)
        };
        let sectors = (data.byte_len() / 512) as u64;
        Ok(Some(Prepared { index, _pages: pages, iovecs, fd, offset: data.byte_offset(), write, sectors }))
    }

    /// Runs the I/O of `pending` (one submission) and records each
    /// result in `statuses`; the pages are unmapped after.
    fn run_pending(&mut self, pending: &mut Vec<Prepared<G::Mapped>>, statuses: &mut [BlkifStatus]) {
        let Some(uring) = self.uring.as_mut() else {
            pending.clear();
            return;
        };
        let io: Vec<&Prepared<G::Mapped>> = pending.iter().filter(|p| !p.iovecs.is_empty()).collect();
        let ops: Vec<uring::Op> = io
            .iter()
            .map(|p| uring::Op {
                fd: p.fd,
                offset: p.offset,
                iovecs: p.iovecs.as_ptr(),
                // At most IOV_MAX (direct_fd checked).
                count: p.iovecs.len() as u32,
                write: p.write,
            })
            .collect();
        let mut results = vec![0i32; ops.len()];
        if let [op] = ops.as_slice() {
            // One operation gains nothing from the ring, and a file that
            // cannot be read without blocking (tmpfs) would have io_uring
            // hand it to a worker thread: do it here.
            let len: usize = io.first().map_or(0, |p| p.iovecs.iter().map(|iov| iov.iov_len).sum());
            // SAFETY: as for the submission below.
            let done = unsafe { sys::finish_iovecs(op.fd, op.offset, io.first().map_or(&[][..], |p| &p.iovecs[..]), 0, op.write) };
            results[0] = match done {
                // At most 256 segments of a page: fits an i32.
                Ok(()) => len as i32,
                Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
            };
        } else {
            // SAFETY: each op's iovecs live in `pending`, not touched until
            // `run` returns; they describe the request's regions, mapped by
            // its `pages` (in `pending` too) or by the persistent cache, which
            // evicts no page of the batch before `end_batch`; the disk's fd is
            // open as long as `self.disk`. No Rust reference to the pages
            // exists (regions are raw views).
            unsafe { uring.run(&ops, &mut results) };
        }
        for (p, &rc) in io.iter().zip(&results) {
            let len: usize = p.iovecs.iter().map(|iov| iov.iov_len).sum();
            let outcome = match usize::try_from(rc) {
                Ok(done) if done >= len => Ok(()),
                // Short: the rest with preadv/pwritev.
                // SAFETY: as for the submission above; the pages are
                // still mapped.
                Ok(done) => unsafe { sys::finish_iovecs(p.fd, p.offset, &p.iovecs, done, p.write) },
                Err(_) => Err(std::io::Error::from_raw_os_error(rc.saturating_neg())),
            };
            match outcome {
                Ok(()) => {
                    let (req, sect) =
                        if p.write { (&self.stats.wr_req, &self.stats.wr_sect) } else { (&self.stats.rd_req, &self.stats.rd_sect) };
                    Stats::add(req, 1);
                    Stats::add(sect, p.sectors);
                }
                Err(source) => {
                    let e = ServeError::Disk(DiskError::Io {
                        op: if p.write { "write" } else { "read" },
                        offset: p.offset,
                        len: len as u64,
                        source,
                    });
                    log::debug!("batched I/O at {} failed: {e}", p.offset);
                    Stats::add(&self.stats.errors, 1);
                    if let Some(status) = statuses.get_mut(p.index) {
                        *status = e.status();
                    }
                }
            }
        }
        pending.clear();
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
        transfer_regions(&*self.disk, &mut self.bounce, &self.stats, data, &regions)?;
        if reading {
            return Ok(());
        }
        // The data is on the disk: unmap before the (possibly slow) flush.
        drop(regions);
        drop(pages);
        if data.postflush {
            self.disk.flush()?;
        }
        Ok(())
    }


}

/// Reads or writes the mapped `regions` of `data` on `disk`, and counts
/// it.
fn transfer_regions<D: Disk>(
    disk: &D,
    bounce: &mut BounceBuffer,
    stats: &Stats,
    data: &DataRequest,
    regions: &[SharedMemory<'_>],
) -> Result<(), ServeError> {
    let sectors = (data.byte_len() / 512) as u64;
    if data.op == IoOp::Read {
        disk.read_vectored(data.byte_offset(), regions, bounce)?;
        Stats::add(&stats.rd_req, 1);
        Stats::add(&stats.rd_sect, sectors);
    } else {
        disk.write_vectored(data.byte_offset(), regions, bounce)?;
        Stats::add(&stats.wr_req, 1);
        Stats::add(&stats.wr_sect, sectors);
    }
    Ok(())
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
    fn a_batch_on_a_raw_disk_goes_through_io_uring_in_order_with_flushes_and_failures() {
        for persistent in [false, true] {
            let path = std::env::temp_dir().join(format!("rblkback-batch-{}-{persistent}", std::process::id()));
            std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
            let disk = Arc::new(crate::disk::RawDisk::open(&path, Default::default()).unwrap().with_batched_io(true));
            let table = Arc::new(MemGrantTable::new(DOMID));
            let limits =
                Limits { sectors: 2048, sector_size: 512, read_only: false, discard: true, max_indirect_segments: 256 };
            // Fewer persistent slots than the batch's pages: evictions must
            // spare the pages of the batch (they map per request instead).
            let pages = GrantPages::new(Arc::clone(&table), DOMID, persistent.then_some(4));
            let stats = Arc::new(Stats::default());
            let mut device = BlockDevice::new(pages, disk, limits, Arc::clone(&stats)).batched();
            assert!(device.uring.is_some(), "io_uring is available on this host");
            let writes: Vec<GrantRef> = (0..8).map(|_| table.grant(true)).collect();
            for (i, &g) in writes.iter().enumerate() {
                table.write_page(g, 0, &pattern(i as u8, 4096));
            }
            let reads: Vec<GrantRef> = (0..8).map(|_| table.grant(true)).collect();
            let mut batch: Vec<BlkifRequest> =
                writes.iter().enumerate().map(|(i, &g)| rw(BLKIF_OP_WRITE, i as u64 * 8, &[BlkifRequestSegment::new(g, 0, 7)])).collect();
            // A flush after the writes, a request off the disk, a write of
            // a page not granted, then reads of what was written.
            let mut flush = rw(BLKIF_OP_FLUSH_DISKCACHE, 0, &[]);
            flush.id = 1000;
            batch.push(flush);
            let mut off_disk = rw(BLKIF_OP_READ, 2047, &[BlkifRequestSegment::new(reads[0], 0, 7)]);
            off_disk.id = 1001;
            batch.push(off_disk);
            let mut not_granted = rw(BLKIF_OP_WRITE, 100, &[BlkifRequestSegment::new(9999, 0, 7)]);
            not_granted.id = 1002;
            batch.push(not_granted);
            for (i, &g) in reads.iter().enumerate() {
                let mut read = rw(BLKIF_OP_READ, (7 - i as u64) * 8, &[BlkifRequestSegment::new(g, 0, 7)]);
                read.id = 2000 + i as u64;
                batch.push(read);
            }

            let mut responses = Vec::new();
            device.handle_batch(&batch, &mut responses);

            let ids: Vec<u64> = responses.iter().map(|r| r.id).collect();
            assert_eq!(ids, batch.iter().map(|r| r.id).collect::<Vec<_>>(), "responses in request order");
            let statuses: Vec<i16> = responses.iter().map(|r| r.status).collect();
            assert!(statuses[..9].iter().all(|&s| s == BLKIF_RSP_OKAY), "{statuses:?}");
            assert_eq!(&statuses[9..11], &[BLKIF_RSP_ERROR, BLKIF_RSP_ERROR], "{statuses:?}");
            assert!(statuses[11..].iter().all(|&s| s == BLKIF_RSP_OKAY), "{statuses:?}");
            let file = std::fs::read(&path).unwrap();
            for i in 0..8 {
                assert_eq!(file[i * 4096..(i + 1) * 4096], pattern(i as u8, 4096)[..], "write {i} on the disk");
                let mut page = vec![0u8; 4096];
                table.read_page(reads[i], 0, &mut page);
                assert_eq!(page, pattern(7 - i as u8, 4096), "read {i} in its page");
            }
            assert!(file[100 * 512..101 * 512].iter().all(|&x| x == 0), "the ungranted write wrote nothing");
            let counted = stats.snapshot();
            assert_eq!((counted.wr_req, counted.rd_req, counted.f_req, counted.errors), (8, 8, 1, 2), "{counted:?}");
            std::fs::remove_file(&path).unwrap();
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
