//! The rogue on the loopback hypervisor, against the project's own
//! blkfront (rblkfront): each mode's answers reach the frontend as the
//! protocol error they are meant to provoke, and the rogue stops cleanly
//! however the device ends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hypercall_abi::platform::{Transaction, Xenstore, XsPerm, XsPermAccess};
use hypercall_abi::ring::RingError;
use hypercall_abi::xen::xenbus::XenbusState;
use hypercall_abi::xen::DomId;
use hypercall_abi::xenstore::XsClient;
use rblkfront::platform::Loopback;
use rblkfront::{BlockFrontend, Error, FrontendConfig, ProtocolError};
use rogue_blkback::answer::{BOGUS_ID_XOR, BOGUS_STATUS, OVERRUN_BY};
use rogue_blkback::{Config, Ended, LoopbackPlatform, Mode, RogueError, StopSignal};
use xen_loopback::{Hypervisor, LoopbackDomain, LoopbackEventChannels, LoopbackGrantShare};

const FE: DomId = 1;
const DEVID: u32 = 51712;
const KIND: &str = "rvbd";
const TIMEOUT: Duration = Duration::from_secs(20);

type Front = BlockFrontend<LoopbackGrantShare, LoopbackEventChannels, XsClient<UnixStream>>;

/// A hypervisor, domain 0 as the toolstack, and the device's directories
/// as `attach_rblkback` writes them on the test host.
struct Rig {
    dir: PathBuf,
    d0: LoopbackDomain,
    xs0: XsClient<UnixStream>,
    be: String,
    fe: String,
}

impl Rig {
    fn start(name: &str) -> Rig {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rogue-blkback-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Hypervisor::bind(&dir).unwrap().spawn().unwrap();
        let d0 = LoopbackDomain::connect(&dir, 0).unwrap();
        let xs0 = d0.xenstore().unwrap();
        let be = format!("/local/domain/0/backend/{KIND}/{FE}/{DEVID}");
        let fe = format!("/local/domain/{FE}/device/vbd/{DEVID}");
        let rig = Rig { dir, d0, xs0, be, fe };
        let perms = |owner: DomId, reader: DomId| {
            [XsPerm { domid: owner, access: XsPermAccess::None }, XsPerm { domid: reader, access: XsPermAccess::Read }]
        };
        let fe_id = FE.to_string();
        for (node, value) in [("frontend", rig.fe.as_str()), ("frontend-id", &fe_id), ("online", "1"), ("state", "1")] {
            rig.write(&format!("{}/{node}", rig.be), value);
        }
        for node in ["", "/frontend", "/frontend-id", "/online", "/state"] {
            rig.xs0.set_perms(Transaction::NONE, &format!("{}{node}", rig.be), &perms(0, FE)).unwrap();
        }
        let devid = DEVID.to_string();
        for (node, value) in
            [("backend", rig.be.as_str()), ("backend-id", "0"), ("virtual-device", &devid), ("state", "1")]
        {
            rig.write(&format!("{}/{node}", rig.fe), value);
        }
        for node in ["", "/backend", "/backend-id", "/virtual-device", "/state"] {
            rig.xs0.set_perms(Transaction::NONE, &format!("{}{node}", rig.fe), &perms(FE, 0)).unwrap();
        }
        rig
    }

    fn write(&self, path: &str, value: &str) {
        self.xs0.write(Transaction::NONE, path, value.as_bytes()).unwrap();
    }

    fn node(&self, path: &str) -> Option<String> {
        self.xs0.read(Transaction::NONE, path).ok().map(|v| String::from_utf8(v).unwrap())
    }

    fn backend_state(&self) -> Option<String> {
        self.node(&format!("{}/state", self.be))
    }

    fn wait_backend_state(&self, state: XenbusState) {
        let deadline = Instant::now() + TIMEOUT;
        while self.backend_state().as_deref() != Some(state.as_str()) {
            assert!(Instant::now() < deadline, "backend state stayed {:?}, expected {state:?}", self.backend_state());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts the rogue, as dom0's process would be, in a thread.
    fn rogue(&self, mode: Mode, connect_timeout: Duration) -> Rogue {
        let platform = LoopbackPlatform::from_domain(self.d0.clone());
        let mut cfg = Config::new(KIND, FE, DEVID, mode);
        cfg.connect_timeout = connect_timeout;
        let stop = Arc::new(StopSignal::new().unwrap());
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || rogue_blkback::run(&platform, &cfg, &stop))
        };
        Rogue { stop, thread }
    }

    /// Domain 1's blkfront for the device, connected to the rogue.
    fn frontend(&self) -> Front {
        let platform = Loopback::connect(&self.dir, FE).unwrap();
        let (grants, evtchn, store) = platform.handles().unwrap();
        let mut cfg = FrontendConfig::new(DEVID);
        cfg.timeout = Duration::from_secs(10);
        let mut dev = BlockFrontend::new(grants, evtchn, store, cfg).unwrap();
        dev.connect().unwrap();
        dev
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Rogue {
    stop: Arc<StopSignal>,
    thread: JoinHandle<Result<Ended, RogueError>>,
}

impl Rogue {
    fn join(self) -> Result<Ended, RogueError> {
        let deadline = Instant::now() + TIMEOUT;
        while !self.thread.is_finished() {
            assert!(Instant::now() < deadline, "the rogue did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
        self.thread.join().unwrap()
    }
}

/// Connects blkfront to a rogue answering as `mode`, reads one sector,
/// disconnects; returns the read's error, after checking that the rogue
/// stopped on the frontend's Closing and left the backend Closed.
fn read_from(mode: Mode) -> Error {
    let rig = Rig::start(&mode.to_string());
    let rogue = rig.rogue(mode, TIMEOUT);
    let mut dev = rig.frontend();
    assert_eq!((dev.sectors(), dev.sector_size(), dev.queues(), dev.ring_page_order()), (2048, 512, 1, 0));
    assert!(!dev.persistent() && !dev.can_flush() && !dev.can_discard());

    let mut buf = vec![0u8; 512];
    let err = dev.read(0, &mut buf).expect_err("the rogue's answer must not be accepted");

    assert!(dev.broken().is_some(), "a protocol error breaks the device");
    dev.disconnect().unwrap();
    assert_eq!(rogue.join().unwrap(), Ended::FrontendClosed(XenbusState::Closing));
    assert_eq!(rig.backend_state().as_deref(), Some("6"));
    err
}

#[test]
fn bad_id_and_status_is_refused() {
    let err = read_from(Mode::BadIdAndStatus);

    // Two responses to one request put rsp_prod past the request pushed,
    // which rblkfront's ring refuses before it looks at any id.
    assert!(
        matches!(
            err,
            Error::Protocol(ProtocolError::Ring {
                source: RingError::ResponseProducerOverrun { rsp_prod: 2, rsp_cons: 0, req_prod: 1 },
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn an_unknown_id_is_refused() {
    let err = read_from(Mode::BadId);

    assert!(
        matches!(err, Error::Protocol(ProtocolError::UnknownId { id, .. }) if id & BOGUS_ID_XOR == BOGUS_ID_XOR),
        "{err}"
    );
}

#[test]
fn a_status_that_is_no_blkif_status_is_refused() {
    let err = read_from(Mode::BadStatus);

    assert!(matches!(err, Error::Protocol(ProtocolError::BadStatus { status: BOGUS_STATUS, .. })), "{err}");
}

#[test]
fn an_rsp_prod_beyond_the_responses_is_refused() {
    let err = read_from(Mode::Overrun);

    assert!(
        matches!(
            err,
            Error::Protocol(ProtocolError::Ring { source: RingError::ResponseProducerOverrun { rsp_prod, .. }, .. })
                if rsp_prod == 1 + OVERRUN_BY
        ),
        "{err}"
    );
}

#[test]
fn the_rogue_stops_when_its_directory_is_removed_and_does_not_recreate_it() {
    // Arrange
    let rig = Rig::start("removed");
    let rogue = rig.rogue(Mode::Overrun, TIMEOUT);
    rig.wait_backend_state(XenbusState::InitWait);

    // Act
    rig.xs0.rm(Transaction::NONE, &rig.be).unwrap();

    // Assert
    assert_eq!(rogue.join().unwrap(), Ended::BackendRemoved);
    assert_eq!(rig.node(&rig.be), None);
}

#[test]
fn the_rogue_stops_on_the_stop_signal_and_leaves_the_device_closed() {
    // Arrange
    let rig = Rig::start("stop");
    let rogue = rig.rogue(Mode::BadIdAndStatus, TIMEOUT);
    rig.wait_backend_state(XenbusState::InitWait);

    // Act
    rogue.stop.stop();

    // Assert
    assert_eq!(rogue.join().unwrap(), Ended::Stopped);
    assert_eq!(rig.backend_state().as_deref(), Some("6"));
}

#[test]
fn a_frontend_that_sets_up_several_rings_is_refused_by_name() {
    // Arrange: the frontend's nodes, written by hand, with two queues.
    let rig = Rig::start("queues");
    let rogue = rig.rogue(Mode::BadIdAndStatus, TIMEOUT);
    rig.wait_backend_state(XenbusState::InitWait);

    // Act
    for (node, value) in [("multi-queue-num-queues", "2"), ("state", "3")] {
        rig.write(&format!("{}/{node}", rig.fe), value);
    }

    // Assert
    let err = rogue.join().unwrap_err();
    assert!(
        matches!(&err, RogueError::RingShape { path, value: 2 } if path.ends_with("/multi-queue-num-queues")),
        "{err}"
    );
    assert_eq!(rig.backend_state().as_deref(), Some("6"));
}

#[test]
fn a_frontend_that_never_initialises_times_out() {
    // Arrange
    let rig = Rig::start("timeout");

    // Act
    let rogue = rig.rogue(Mode::BadIdAndStatus, Duration::from_millis(300));

    // Assert
    let err = rogue.join().unwrap_err();
    assert!(matches!(err, RogueError::Timeout { state: XenbusState::Initialising, .. }), "{err}");
    assert_eq!(rig.backend_state().as_deref(), Some("6"));
}
