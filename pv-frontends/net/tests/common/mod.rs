//! A loopback rig for the frontend's tests: a hypervisor thread, the test
//! as the toolstack (domain 0) that creates a vif for domain 1, and a
//! mock netback (domain 0, in a thread) that speaks netif as Linux's
//! xen-netback does: it offers its features and moves to InitWait, waits
//! for the frontend to be Connected, maps its rings and binds its ports,
//! answers every transmit slot (with `NETIF_RSP_NULL` after an extra-info
//! slot) and fills posted receive pages with the frames it is given, a
//! page per slot. It can misbehave in one way at a time.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hypercall_abi::platform::{
    EventChannels, GrantMap, MappedGrants, Transaction, Xenstore, XsPerm, XsPermAccess,
};
use hypercall_abi::ring::{BackRing, SringIndex};
use hypercall_abi::xen::netif::{
    NetifExtraFlags, NetifExtraGso, NetifExtraInfo, NetifRxRequest, NetifRxResponse,
    NetifTxRequest, NetifTxResponse, NETIF_RSP_NULL, NETIF_RSP_OKAY, NETRXF_EXTRA_INFO,
    NETRXF_MORE_DATA, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA,
};
use hypercall_abi::xen::{DomId, PAGE_SIZE};
use hypercall_abi::xenstore::XsClient;
use rnetfront::platform::Loopback;
use rnetfront::{FrontendConfig, NetFrontend};
use xen_loopback::{Hypervisor, LoopbackDomain, LoopbackEventChannels, LoopbackGrantShare};
use zerocopy::{FromBytes, IntoBytes};

pub const FE: DomId = 1;
pub const DEVID: u32 = 0;
pub const MAC: &str = "00:16:3e:5a:01:02";
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub type Front = NetFrontend<LoopbackGrantShare, LoopbackEventChannels, XsClient<UnixStream>>;

/// The hypervisor, domain 0 as toolstack, and the vif's directories.
pub struct Toolstack {
    pub dir: PathBuf,
    pub d0: LoopbackDomain,
    pub xs0: XsClient<UnixStream>,
    pub be_path: String,
    pub fe_path: String,
    d1: OnceLock<LoopbackDomain>,
}

impl Toolstack {
    /// Starts a hypervisor and creates the vif's directories as `xl
    /// network-attach` does, each readable by the other end.
    pub fn start(name: &str) -> Toolstack {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rnetfront-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Hypervisor::bind(&dir).unwrap().spawn().unwrap();
        let d0 = LoopbackDomain::connect(&dir, 0).unwrap();
        let xs0 = d0.xenstore().unwrap();
        let be_path = format!("/local/domain/0/backend/vif/{FE}/{DEVID}");
        let fe_path = format!("/local/domain/{FE}/device/vif/{DEVID}");
        let none = Transaction::NONE;
        let be_nodes = [
            ("frontend", fe_path.as_str()),
            ("frontend-id", &FE.to_string()),
            ("online", "1"),
            ("state", "1"),
            ("handle", &DEVID.to_string()),
            ("mac", MAC),
            ("script", "vif-bridge"),
        ];
        for (node, value) in be_nodes {
            xs0.write(none, &format!("{be_path}/{node}"), value.as_bytes())
                .unwrap();
        }
        let fe_nodes = [
            ("backend", be_path.as_str()),
            ("backend-id", "0"),
            ("handle", &DEVID.to_string()),
            ("mac", MAC),
            ("state", "1"),
        ];
        for (node, value) in fe_nodes {
            xs0.write(none, &format!("{fe_path}/{node}"), value.as_bytes())
                .unwrap();
        }
        let perms = |owner: DomId, reader: DomId| {
            [
                XsPerm {
                    domid: owner,
                    access: XsPermAccess::None,
                },
                XsPerm {
                    domid: reader,
                    access: XsPermAccess::Read,
                },
            ]
        };
        for node in [
            "",
            "/frontend",
            "/frontend-id",
            "/online",
            "/state",
            "/handle",
            "/mac",
            "/script",
        ] {
            xs0.set_perms(none, &format!("{be_path}{node}"), &perms(0, FE))
                .unwrap();
        }
        for node in ["", "/backend", "/backend-id", "/handle", "/mac", "/state"] {
            xs0.set_perms(none, &format!("{fe_path}{node}"), &perms(FE, 0))
                .unwrap();
        }
        Toolstack {
            dir,
            d0,
            xs0,
            be_path,
            fe_path,
            d1: OnceLock::new(),
        }
    }

    pub fn node(&self, path: &str) -> Option<String> {
        self.xs0
            .read(Transaction::NONE, path)
            .ok()
            .map(|v| String::from_utf8(v).unwrap())
    }

    pub fn backend_node(&self, node: &str) -> Option<String> {
        self.node(&format!("{}/{node}", self.be_path))
    }

    pub fn frontend_node(&self, node: &str) -> Option<String> {
        self.node(&format!("{}/{node}", self.fe_path))
    }

    pub fn set_backend_node(&self, node: &str, value: &str) {
        self.xs0
            .write(
                Transaction::NONE,
                &format!("{}/{node}", self.be_path),
                value.as_bytes(),
            )
            .unwrap();
    }

    pub fn wait_node(&self, path: &str, value: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while self.node(path).as_deref() != Some(value) {
            assert!(
                Instant::now() < deadline,
                "{path} stayed {:?}, expected {value}",
                self.node(path)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Domain 1's frontend for the vif (not connected).
    pub fn frontend(&self, cfg: FrontendConfig) -> Front {
        let d1 = self
            .d1
            .get_or_init(|| LoopbackDomain::connect(&self.dir, FE).unwrap());
        let platform = Loopback::from_domain(d1.clone());
        let (grants, evtchn, store) = platform.handles().unwrap();
        NetFrontend::new(grants, evtchn, store, cfg).unwrap()
    }
}

impl Drop for Toolstack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A frontend configuration with a short timeout.
pub fn config() -> FrontendConfig {
    let mut cfg = FrontendConfig::new(DEVID);
    cfg.timeout = Duration::from_secs(10);
    cfg
}

/// What the mock does wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    None,
    /// Transmit responses carry another id.
    TxUnknownId,
    /// Every transmit response after the first answers the first id.
    TxDuplicate,
    /// Transmit responses carry a status that is no NETIF_RSP_*.
    TxBadStatus,
    /// Transmit responses are all NETIF_RSP_NULL.
    TxNullForData,
    /// The tx ring's rsp_prod runs past the requests.
    TxOverrun,
    /// Receive responses carry another id.
    RxWrongId,
    /// Receive responses claim bytes beyond their page.
    RxBeyondPage,
    /// Receive responses carry a negative status.
    RxNegativeStatus,
    /// A received frame never ends (more_data on every slot).
    RxEndless,
    /// GSO extra-info slots carry size 0.
    RxBadGso,
}

/// What the mock offers.
#[derive(Clone, Debug)]
pub struct MockConfig {
    pub split_event_channels: bool,
    pub max_queues: Option<u32>,
    pub gso: bool,
    pub ipv6_csum: bool,
    pub misbehaviour: Misbehaviour,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            split_event_channels: false,
            max_queues: None,
            gso: true,
            ipv6_csum: true,
            misbehaviour: Misbehaviour::None,
        }
    }
}

/// A frame the mock took off a tx ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentFrame {
    pub queue: u32,
    pub data: Vec<u8>,
    /// The NETTXF_* flags of the first slot.
    pub flags: u16,
    /// The GSO extra's (type, size), if any.
    pub gso: Option<(u8, u16)>,
    /// Data slots the frame took.
    pub slots: usize,
}

/// A frame for the mock to deliver on queue 0's rx ring.
#[derive(Clone, Debug, Default)]
pub struct Delivery {
    pub data: Vec<u8>,
    /// NETRXF_* checksum flags for the first slot.
    pub flags: u16,
    pub gso: Option<NetifExtraGso>,
}

/// The mock netback, as domain 0, in a thread.
pub struct MockNetback {
    stop: Arc<AtomicBool>,
    /// While set, the mock takes nothing off the tx rings.
    pub paused: Arc<AtomicBool>,
    pub sent: Receiver<SentFrame>,
    pub deliver: Sender<Delivery>,
    thread: Option<JoinHandle<()>>,
}

struct MockQueue<'a> {
    tx: BackRing<'a, NetifTxRequest, NetifTxResponse>,
    rx: BackRing<'a, NetifRxRequest, NetifRxResponse>,
    tx_port: u32,
    rx_port: u32,
}

impl MockNetback {
    pub fn start(ts: &Toolstack, cfg: MockConfig) -> MockNetback {
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let (sent_tx, sent) = mpsc::channel();
        let (deliver, deliveries) = mpsc::channel::<Delivery>();
        let (d0, be, fe) = (ts.d0.clone(), ts.be_path.clone(), ts.fe_path.clone());
        let (flag, pause) = (Arc::clone(&stop), Arc::clone(&paused));
        let thread = std::thread::spawn(move || {
            let xs = d0.xenstore().unwrap();
            let none = Transaction::NONE;
            let write = |node: &str, value: &str| {
                xs.write(none, &format!("{be}/{node}"), value.as_bytes())
                    .unwrap()
            };
            let read = |node: &str| {
                xs.read(none, &format!("{fe}/{node}"))
                    .ok()
                    .map(|v| String::from_utf8(v).unwrap())
            };
            let gso = if cfg.gso { "1" } else { "0" };
            for (node, value) in [
                ("feature-sg", "1"),
                ("feature-gso-tcpv4", gso),
                ("feature-gso-tcpv6", gso),
                (
                    "feature-ipv6-csum-offload",
                    if cfg.ipv6_csum { "1" } else { "0" },
                ),
                ("feature-rx-copy", "1"),
                ("feature-rx-flip", "0"),
                (
                    "feature-split-event-channels",
                    if cfg.split_event_channels { "1" } else { "0" },
                ),
            ] {
                write(node, value);
            }
            if let Some(max) = cfg.max_queues {
                write("multi-queue-max-queues", &max.to_string());
            }
            write("state", "2");
            let deadline = Instant::now() + TIMEOUT;
            while read("state").as_deref() != Some("4") {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "the frontend never became Connected"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            let nr_queues: u32 = read("multi-queue-num-queues").map_or(1, |n| n.parse().unwrap());
            let gm = d0.grant_map();
            let ev = d0.event_channels().unwrap();
            let mut pages = Vec::new();
            let mut ports = Vec::new();
            for q in 0..nr_queues {
                let prefix = if nr_queues == 1 {
                    String::new()
                } else {
                    format!("queue-{q}/")
                };
                let node = |name: &str| {
                    read(&format!("{prefix}{name}")).map(|v| v.parse::<u32>().unwrap())
                };
                let tx_ref = node("tx-ring-ref").unwrap();
                let rx_ref = node("rx-ring-ref").unwrap();
                let (tx_remote, rx_remote) =
                    match (node("event-channel-tx"), node("event-channel-rx")) {
                        (Some(tx), Some(rx)) => (tx, rx),
                        _ => {
                            let port = node("event-channel").unwrap();
                            (port, port)
                        }
                    };
                pages.push((
                    gm.map(FE, &[tx_ref], true).unwrap(),
                    gm.map(FE, &[rx_ref], true).unwrap(),
                ));
                let tx_port = ev.bind_interdomain(FE, tx_remote).unwrap();
                let rx_port = if rx_remote == tx_remote {
                    tx_port
                } else {
                    ev.bind_interdomain(FE, rx_remote).unwrap()
                };
                ports.push((tx_port, rx_port));
            }
            let memories: Vec<_> = pages
                .iter()
                .map(|(tx, rx)| (tx.memory(), rx.memory()))
                .collect();
            let mut queues: Vec<MockQueue<'_>> = memories
                .iter()
                .zip(&ports)
                .map(|((tx, rx), &(tx_port, rx_port))| MockQueue {
                    tx: BackRing::new(tx.ring_mem().unwrap()).unwrap(),
                    rx: BackRing::new(rx.ring_mem().unwrap()).unwrap(),
                    tx_port,
                    rx_port,
                })
                .collect();
            write("state", "4");

            let mut state = "4";
            let mut pending: Option<Delivery> = None;
            let mut first_id: Option<u16> = None;
            while !flag.load(Ordering::Relaxed) {
                match read("state").as_deref() {
                    Some("5") if state == "4" => {
                        state = "5";
                        write("state", state);
                    }
                    Some("6") => {
                        write("state", "6");
                        break;
                    }
                    _ => {}
                }
                let mut busy = false;
                if !pause.load(Ordering::Relaxed) {
                    for (q, queue) in queues.iter_mut().enumerate() {
                        busy |= serve_tx(
                            q as u32,
                            queue,
                            &gm,
                            &ev,
                            &sent_tx,
                            cfg.misbehaviour,
                            &mut first_id,
                        );
                    }
                }
                if pending.is_none() {
                    pending = deliveries.try_recv().ok();
                }
                if let (Some(frame), Some(queue)) = (pending.take(), queues.first_mut()) {
                    if deliver_rx(queue, &gm, &ev, &frame, cfg.misbehaviour) {
                        busy = true;
                    } else {
                        pending = Some(frame);
                    }
                }
                if !busy {
                    let mut more = false;
                    for queue in &mut queues {
                        more |= matches!(queue.tx.final_check_for_requests(), Ok(true));
                        more |= matches!(queue.rx.final_check_for_requests(), Ok(true));
                    }
                    if !more {
                        if let Ok(Some(p)) = ev.wait(Some(Duration::from_millis(5))) {
                            ev.unmask(p).unwrap();
                        }
                    }
                }
            }
        });
        MockNetback {
            stop,
            paused,
            sent,
            deliver,
            thread: Some(thread),
        }
    }

    /// The next frame the backend took off a tx ring.
    pub fn next_sent(&self) -> SentFrame {
        self.sent
            .recv_timeout(TIMEOUT)
            .expect("the backend saw no frame")
    }
}

impl Drop for MockNetback {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

/// Reads `size` bytes at `offset` of the frontend's page `gref`.
fn read_page<G: GrantMap>(gm: &G, gref: u32, offset: usize, size: usize) -> Vec<u8> {
    let mapped = gm.map(FE, &[gref], false).unwrap();
    let mut buf = vec![0u8; size];
    mapped.memory().read(offset, &mut buf).unwrap();
    buf
}

/// Takes every whole frame off a tx ring and answers its slots.
fn serve_tx<G: GrantMap, E: EventChannels>(
    queue_index: u32,
    queue: &mut MockQueue<'_>,
    gm: &G,
    ev: &E,
    sent: &Sender<SentFrame>,
    mode: Misbehaviour,
    first_id: &mut Option<u16>,
) -> bool {
    let mut any = false;
    while let Ok(Some(first)) = queue.tx.consume_request() {
        any = true;
        let mut frame = SentFrame {
            queue: queue_index,
            data: Vec::new(),
            flags: first.flags,
            gso: None,
            slots: 1,
        };
        let mut slots = vec![first];
        let mut extras = 0;
        if first.flags & NETTXF_EXTRA_INFO != 0 {
            let raw = queue.tx.consume_request().unwrap().unwrap();
            let extra = NetifExtraInfo::read_from_bytes(&raw.as_bytes()[..8]).unwrap();
            frame.gso = Some((extra.gso().type_, extra.gso().size));
            extras += 1;
        }
        let mut more = first.flags & NETTXF_MORE_DATA != 0;
        while more {
            let next = queue.tx.consume_request().unwrap().unwrap();
            more = next.flags & NETTXF_MORE_DATA != 0;
            slots.push(next);
        }
        frame.slots = slots.len();
        let rest: usize = slots[1..].iter().map(|s| usize::from(s.size)).sum();
        let first_size = usize::from(first.size) - rest;
        for (i, slot) in slots.iter().enumerate() {
            let size = if i == 0 {
                first_size
            } else {
                usize::from(slot.size)
            };
            assert!(
                usize::from(slot.offset) + size <= PAGE_SIZE,
                "a tx slot crosses its page"
            );
            frame
                .data
                .extend(read_page(gm, slot.gref, usize::from(slot.offset), size));
        }
        for (i, slot) in slots.iter().enumerate() {
            let id = *first_id.get_or_insert(slot.id);
            let mut rsp = NetifTxResponse {
                id: slot.id,
                status: NETIF_RSP_OKAY,
            };
            match mode {
                Misbehaviour::TxUnknownId => rsp.id ^= 0x8000,
                Misbehaviour::TxDuplicate => rsp.id = id,
                Misbehaviour::TxBadStatus => rsp.status = 7,
                Misbehaviour::TxNullForData => rsp.status = NETIF_RSP_NULL,
                _ => {}
            }
            queue.tx.put_response(&rsp).unwrap();
            if i == 0 {
                for _ in 0..extras {
                    queue
                        .tx
                        .put_response(&NetifTxResponse {
                            id: 0,
                            status: NETIF_RSP_NULL,
                        })
                        .unwrap();
                }
            }
        }
        sent.send(frame).ok();
    }
    if any {
        let notify = queue.tx.push_responses_and_check_notify().unwrap();
        if mode == Misbehaviour::TxOverrun {
            queue
                .tx
                .mem()
                .store_index(SringIndex::RspProd, queue.tx.rsp_prod_pvt() + Wrapping(3));
        }
        if notify || mode == Misbehaviour::TxOverrun {
            ev.notify(queue.tx_port).unwrap();
        }
    }
    any
}

/// Fills posted rx pages with `frame`, a page per slot, if enough
/// requests are posted; returns whether it did.
fn deliver_rx<G: GrantMap, E: EventChannels>(
    queue: &mut MockQueue<'_>,
    gm: &G,
    ev: &E,
    frame: &Delivery,
    mode: Misbehaviour,
) -> bool {
    let chunks: Vec<&[u8]> = frame.data.chunks(PAGE_SIZE).collect();
    let data_slots = if mode == Misbehaviour::RxEndless {
        40
    } else {
        chunks.len().max(1)
    };
    let needed = data_slots + usize::from(frame.gso.is_some());
    if (queue.rx.unconsumed_requests().unwrap() as usize) < needed {
        return false;
    }
    for i in 0..data_slots {
        let request = queue.rx.consume_request().unwrap().unwrap();
        let chunk = chunks.get(i).copied().unwrap_or(&[0u8; 64]);
        let mapped = gm.map(FE, &[request.gref], true).unwrap();
        mapped.memory().write(0, chunk).unwrap();
        let mut flags = if i == 0 { frame.flags } else { 0 };
        if i + 1 < data_slots {
            flags |= NETRXF_MORE_DATA;
        }
        if i == 0 && frame.gso.is_some() {
            flags |= NETRXF_EXTRA_INFO;
        }
        let mut rsp = NetifRxResponse {
            id: request.id,
            offset: 0,
            flags,
            status: chunk.len() as i16,
        };
        match mode {
            Misbehaviour::RxWrongId => rsp.id ^= 1,
            Misbehaviour::RxBeyondPage => (rsp.offset, rsp.status) = (4000, 200),
            Misbehaviour::RxNegativeStatus => rsp.status = -1,
            _ => {}
        }
        queue.rx.put_response(&rsp).unwrap();
        if i == 0 {
            if let Some(mut gso) = frame.gso {
                let _ = queue.rx.consume_request().unwrap().unwrap();
                if mode == Misbehaviour::RxBadGso {
                    gso.size = 0;
                }
                let extra = NetifExtraInfo::from_gso(gso, NetifExtraFlags::empty());
                queue.rx.put_response(&zerocopy::transmute!(extra)).unwrap();
            }
        }
    }
    if queue.rx.push_responses_and_check_notify().unwrap() {
        ev.notify(queue.rx_port).unwrap();
    }
    true
}
