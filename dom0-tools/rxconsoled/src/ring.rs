//! The console ring page (`struct xencons_interface`, `io/console.h`),
//! from the backend's side: the guest produces into `out` and consumes
//! from `in`; the daemon the reverse.
//!
//! The guest is not trusted. The daemon keeps its own copies of the two
//! indices it owns (`out_cons`, `in_prod`), reads each index the guest
//! owns once per operation, and checks it against its own: a producer
//! more than a ring's size ahead of its consumer (or behind it) is a
//! [`RingError::BadIndex`], after which the daemon stops serving the
//! domain. Bytes are copied out of the page once, with volatile copies,
//! through [`SharedMemory`].

use std::fmt;
use std::mem::offset_of;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use hypercall_abi::platform::{SharedMemory, SharedMemoryError};
use hypercall_abi::xen::console::{XenconsInterface, XENCONS_IN_SIZE, XENCONS_OUT_SIZE};

/// Byte offsets in `struct xencons_interface`.
pub(crate) mod off {
    use super::{offset_of, XenconsInterface as I};

    pub const IN: usize = offset_of!(I, in_);
    pub const OUT: usize = offset_of!(I, out);
    pub const IN_CONS: usize = offset_of!(I, in_cons);
    pub const IN_PROD: usize = offset_of!(I, in_prod);
    pub const OUT_CONS: usize = offset_of!(I, out_cons);
    pub const OUT_PROD: usize = offset_of!(I, out_prod);
}

/// `XENCONS_IN_SIZE` as a ring index distance.
const IN_SIZE: u32 = XENCONS_IN_SIZE as u32;
/// `XENCONS_OUT_SIZE` as a ring index distance.
const OUT_SIZE: u32 = XENCONS_OUT_SIZE as u32;

/// Why a console ring cannot be used any more.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The guest set an index more than a ring's size away from ours.
    #[error("the guest broke the console protocol: the {ring} ring's indices are inconsistent (consumer {cons}, producer {prod})")]
    BadIndex {
        /// `in` or `out`.
        ring: &'static str,
        /// The consumer index.
        cons: u32,
        /// The producer index.
        prod: u32,
    },
    /// The page is too small for `struct xencons_interface`, or mapped
    /// read-only.
    #[error("the console page cannot be accessed: {0}")]
    Memory(#[from] SharedMemoryError),
}

/// A mapping holding a domain's `struct xencons_interface`.
pub trait ConsolePage: fmt::Debug {
    /// The mapped page.
    fn memory(&self) -> SharedMemory<'_>;
}

impl ConsolePage for xen_linux::LinuxMappedGrants {
    fn memory(&self) -> SharedMemory<'_> {
        hypercall_abi::platform::MappedGrants::memory(self)
    }
}

impl ConsolePage for xen_linux::ForeignMapping {
    fn memory(&self) -> SharedMemory<'_> {
        xen_linux::ForeignMapping::memory(self)
    }
}

/// The backend's end of a console ring.
#[derive(Debug)]
pub struct ConsoleRing {
    page: Box<dyn ConsolePage>,
    /// Our `out_cons`: how far we have read the guest's output.
    out_cons: Wrapping<u32>,
    /// Our `in_prod`: how far we have written the guest's input.
    in_prod: Wrapping<u32>,
}

impl ConsoleRing {
    /// Takes over `page`, starting from the indices it holds (a domain
    /// may have written before the daemon started, or a previous daemon
    /// may have served it).
    pub fn new(page: Box<dyn ConsolePage>) -> Result<Self, RingError> {
        let (out_cons, in_prod) = {
            let mem = page.memory();
            if !mem.is_writable() {
                return Err(RingError::Memory(SharedMemoryError::ReadOnly));
            }
            (
                Wrapping(mem.load_u32(off::OUT_CONS, Ordering::Acquire)?),
                Wrapping(mem.load_u32(off::IN_PROD, Ordering::Acquire)?),
            )
        };
        Ok(ConsoleRing {
            page,
            out_cons,
            in_prod,
        })
    }

    /// Copies what the guest has written to its `out` ring (at most the
    /// ring's size) to the end of `into`, and hands the space back;
    /// returns how many bytes. The guest should then be notified if any
    /// were read.
    pub fn read_output(&mut self, into: &mut Vec<u8>) -> Result<usize, RingError> {
        let mem = self.page.memory();
        let cons = self.out_cons;
        // Acquire: see the bytes before the producer index that covers
        // them (console.h's reader: read prod, then mb).
        let prod = Wrapping(mem.load_u32(off::OUT_PROD, Ordering::Acquire)?);
        let avail = (prod - cons).0;
        if avail > OUT_SIZE {
            return Err(RingError::BadIndex {
                ring: "out",
                cons: cons.0,
                prod: prod.0,
            });
        }
        let mut done = 0u32;
        // Ends: at most two rounds (up to the ring's end, then from its
        // start), each of at least one byte.
        while done < avail {
            let at = XenconsInterface::mask_out((cons + Wrapping(done)).0);
            let n = (avail - done).min(OUT_SIZE - at as u32) as usize;
            let start = into.len();
            into.resize(start + n, 0);
            mem.read(off::OUT + at, &mut into[start..])?;
            done += n as u32;
        }
        if done > 0 {
            // Full barrier (mb): finish reading the bytes before the
            // guest may reuse their space.
            fence(Ordering::SeqCst);
            self.out_cons = cons + Wrapping(done);
            mem.store_u32(off::OUT_CONS, self.out_cons.0, Ordering::Release)?;
        }
        Ok(done as usize)
    }

    /// Room left in the guest's `in` ring.
    pub fn input_space(&self) -> Result<usize, RingError> {
        let used = self.input_used()?;
        Ok((IN_SIZE - used) as usize)
    }

    /// Bytes written to the `in` ring that the guest has not consumed.
    fn input_used(&self) -> Result<u32, RingError> {
        let mem = self.page.memory();
        // Acquire: the guest has finished reading what it consumed.
        let cons = Wrapping(mem.load_u32(off::IN_CONS, Ordering::Acquire)?);
        let used = (self.in_prod - cons).0;
        if used > IN_SIZE {
            return Err(RingError::BadIndex {
                ring: "in",
                cons: cons.0,
                prod: self.in_prod.0,
            });
        }
        Ok(used)
    }

    /// Copies as much of `data` as fits into the guest's `in` ring;
    /// returns how many bytes. The guest should then be notified if any
    /// were written.
    pub fn write_input(&mut self, data: &[u8]) -> Result<usize, RingError> {
        let space = (IN_SIZE - self.input_used()?) as usize;
        let mem = self.page.memory();
        let total = data.len().min(space);
        let mut done = 0usize;
        // Ends: at most two rounds, each of at least one byte.
        while done < total {
            let at = XenconsInterface::mask_in((self.in_prod + Wrapping(done as u32)).0);
            let n = (total - done).min(XENCONS_IN_SIZE - at);
            mem.write(off::IN + at, &data[done..done + n])?;
            done += n;
        }
        if done > 0 {
            // Release (wmb): the bytes are visible before the producer
            // index that covers them.
            self.in_prod += Wrapping(done as u32);
            mem.store_u32(off::IN_PROD, self.in_prod.0, Ordering::Release)?;
        }
        Ok(done)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! An in-memory console page with both ends in the test: the daemon's
    //! through [`ConsolePage`], the guest's through [`Guest`].

    use std::rc::Rc;
    use std::sync::atomic::Ordering;

    use hypercall_abi::platform::SharedMemory;

    use super::{off, ConsolePage, IN_SIZE, OUT_SIZE};
    use crate::sys::HeapPage;

    /// A shared in-memory page; clones are views of the same page.
    #[derive(Debug, Clone)]
    pub(crate) struct TestPage(pub(crate) Rc<HeapPage>);

    impl TestPage {
        pub(crate) fn new() -> Self {
            TestPage(Rc::new(HeapPage::new()))
        }

        /// The guest's side of the page.
        pub(crate) fn guest(&self) -> Guest<'_> {
            Guest(self.0.memory())
        }

        /// How many views of the page exist (the test's, the daemon's
        /// mapping, a fake platform's ...).
        pub(crate) fn views(&self) -> usize {
            Rc::strong_count(&self.0)
        }
    }

    impl ConsolePage for TestPage {
        fn memory(&self) -> SharedMemory<'_> {
            self.0.memory()
        }
    }

    /// The guest: writes output, reads input, and can corrupt indices.
    pub(crate) struct Guest<'a>(pub(crate) SharedMemory<'a>);

    impl Guest<'_> {
        pub(crate) fn get(&self, offset: usize) -> u32 {
            self.0.load_u32(offset, Ordering::Acquire).unwrap()
        }

        pub(crate) fn set(&self, offset: usize, v: u32) {
            self.0.store_u32(offset, v, Ordering::Release).unwrap();
        }

        /// Sets all four indices (e.g. near the wrap of 2^32).
        pub(crate) fn set_indices(&self, in_cons: u32, in_prod: u32, out_cons: u32, out_prod: u32) {
            self.set(off::IN_CONS, in_cons);
            self.set(off::IN_PROD, in_prod);
            self.set(off::OUT_CONS, out_cons);
            self.set(off::OUT_PROD, out_prod);
        }

        /// Writes `data` to the `out` ring as the Linux frontend does;
        /// returns how much fitted.
        pub(crate) fn write(&self, data: &[u8]) -> usize {
            let cons = self.get(off::OUT_CONS);
            let mut prod = self.get(off::OUT_PROD);
            let mut n = 0;
            while n < data.len() && prod.wrapping_sub(cons) < OUT_SIZE {
                let at = off::OUT + (prod % OUT_SIZE) as usize;
                self.0.write(at, &data[n..=n]).unwrap();
                prod = prod.wrapping_add(1);
                n += 1;
            }
            self.set(off::OUT_PROD, prod);
            n
        }

        /// Reads everything waiting in the `in` ring.
        pub(crate) fn read(&self) -> Vec<u8> {
            let mut cons = self.get(off::IN_CONS);
            let prod = self.get(off::IN_PROD);
            let mut out = Vec::new();
            while cons != prod && out.len() < IN_SIZE as usize {
                let mut b = [0u8];
                self.0
                    .read(off::IN + (cons % IN_SIZE) as usize, &mut b)
                    .unwrap();
                out.push(b[0]);
                cons = cons.wrapping_add(1);
            }
            self.set(off::IN_CONS, cons);
            out
        }
    }

    pub(crate) use super::off as offsets;
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::testing::{offsets as off, TestPage};
    use super::*;

    fn ring(page: &TestPage) -> ConsoleRing {
        ConsoleRing::new(Box::new(page.clone())).unwrap()
    }

    #[test]
    fn output_is_copied_once_and_its_space_returned() {
        let page = TestPage::new();
        let mut r = ring(&page);
        page.guest().write(b"hello\r\n");

        let mut got = Vec::new();
        let n = r.read_output(&mut got).unwrap();
        let again = r.read_output(&mut got).unwrap();

        assert_eq!((n, again), (7, 0));
        assert_eq!(got, b"hello\r\n");
        assert_eq!(page.guest().get(off::OUT_CONS), 7);
    }

    #[test]
    fn indices_wrap_at_2_pow_32_and_bytes_at_the_ring_end() {
        let page = TestPage::new();
        let start = u32::MAX - 2;
        page.guest().set_indices(start - 1, start - 1, start, start);
        let mut r = ring(&page);
        let text: Vec<u8> = (0..OUT_SIZE).map(|i| (i % 251) as u8).collect();

        assert_eq!(page.guest().write(&text), text.len(), "a full ring fits");
        let mut got = Vec::new();
        r.read_output(&mut got).unwrap();
        assert_eq!(r.write_input(b"abc").unwrap(), 3);

        assert_eq!(got, text);
        assert_eq!(
            page.guest().get(off::OUT_CONS),
            start.wrapping_add(OUT_SIZE)
        );
        assert_eq!(page.guest().read(), b"abc");
        assert_eq!(page.guest().get(off::IN_PROD), start.wrapping_add(2));
    }

    #[test]
    fn input_stops_when_the_guest_does_not_read() {
        let page = TestPage::new();
        let mut r = ring(&page);

        let first = r.write_input(&[b'x'; 1000]).unwrap();
        let second = r.write_input(&[b'y'; 100]).unwrap();
        let space = r.input_space().unwrap();
        page.guest().read();

        assert_eq!((first, second, space), (1000, 24, 0));
        assert_eq!(r.input_space().unwrap(), IN_SIZE as usize);
    }

    #[test]
    fn hostile_output_producer_is_refused() {
        let page = TestPage::new();
        let mut r = ring(&page);
        page.guest().set(off::OUT_PROD, OUT_SIZE + 1);

        let mut got = Vec::new();
        let err = r.read_output(&mut got).unwrap_err();

        assert!(
            matches!(err, RingError::BadIndex { ring: "out", .. }),
            "{err}"
        );
        assert!(got.is_empty());
        assert_eq!(page.guest().get(off::OUT_CONS), 0, "nothing consumed");
    }

    #[test]
    fn hostile_input_consumer_is_refused() {
        let page = TestPage::new();
        let mut r = ring(&page);
        r.write_input(b"ok").unwrap();
        // The guest claims to have consumed bytes never written.
        page.guest().set(off::IN_CONS, 5);

        assert!(matches!(
            r.input_space(),
            Err(RingError::BadIndex { ring: "in", .. })
        ));
        assert!(matches!(
            r.write_input(b"more"),
            Err(RingError::BadIndex { .. })
        ));
    }

    #[test]
    fn a_guest_rewinding_our_indices_cannot_make_us_reread() {
        let page = TestPage::new();
        let mut r = ring(&page);
        page.guest().write(b"once");
        let mut got = Vec::new();
        r.read_output(&mut got).unwrap();
        r.write_input(b"in").unwrap();

        // The guest scribbles over the indices we own.
        page.guest().set(off::OUT_CONS, 0);
        page.guest().set(off::IN_PROD, 0);
        r.read_output(&mut got).unwrap();
        r.write_input(b"!").unwrap();

        assert_eq!(got, b"once");
        assert_eq!(page.guest().read(), b"in!");
    }

    #[test]
    fn a_read_only_page_is_refused() {
        #[derive(Debug)]
        struct ReadOnly(TestPage);
        impl ConsolePage for ReadOnly {
            fn memory(&self) -> SharedMemory<'_> {
                self.0 .0.read_only_memory()
            }
        }
        let err = ConsoleRing::new(Box::new(ReadOnly(TestPage::new()))).unwrap_err();
        assert!(matches!(
            err,
            RingError::Memory(SharedMemoryError::ReadOnly)
        ));
    }

    proptest! {
        /// Whatever the guest does to its indices, reading and writing
        /// never panic, never return more than a ring's worth, and bytes
        /// written by a well-behaved guest arrive in order.
        #[test]
        fn rings_survive_any_guest(
            start in any::<u32>(),
            steps in proptest::collection::vec((0u8..4, any::<u32>(), 0usize..3000), 1..40),
        ) {
            let page = TestPage::new();
            page.guest().set_indices(start, start, start, start);
            let mut r = ring(&page);
            let mut sent = Vec::new();
            let mut got = Vec::new();
            let mut hostile = false;
            for (kind, value, len) in steps {
                match kind {
                    0 => {
                        let data: Vec<u8> = (0..len).map(|i| (i as u32 ^ value) as u8).collect();
                        let n = page.guest().write(&data);
                        sent.extend_from_slice(&data[..n]);
                    }
                    1 => {
                        let before = got.len();
                        if let Ok(n) = r.read_output(&mut got) {
                            prop_assert!(n <= OUT_SIZE as usize);
                            prop_assert_eq!(got.len() - before, n);
                        }
                    }
                    2 => {
                        if let Ok(n) = r.write_input(&vec![7u8; len]) {
                            prop_assert!(n <= IN_SIZE as usize);
                        }
                        if !hostile {
                            page.guest().read();
                        }
                    }
                    _ => {
                        hostile = true;
                        let which = [off::IN_CONS, off::IN_PROD, off::OUT_CONS, off::OUT_PROD];
                        page.guest().set(which[(value % 4) as usize], value);
                    }
                }
            }
            if !hostile {
                r.read_output(&mut got).unwrap();
                prop_assert_eq!(got, sent);
            }
        }
    }
}
