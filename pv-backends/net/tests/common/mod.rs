//! The test side of rnetback's loopback tests: a hypervisor thread, the
//! toolstack's xenstore set-up, the backend as domain 0 on a real TAP, a
//! minimal xen-netfront in domain 1 (rings, grants, event channels,
//! requests and responses exactly as Linux's netfront makes them), and the
//! host's side of the TAP as a packet socket.

#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hypercall_abi::platform::{
    EventChannels, GrantShare, SharedGrants, Transaction, Xenstore, XsPerm, XsPermAccess,
};
use hypercall_abi::ring::{FrontRing, FrontRingState};
use hypercall_abi::xen::netif::{NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse};
use hypercall_abi::xen::{DomId, EvtchnPort};
use hypercall_abi::xenstore::XsClient;
use rnetback::{Backend, BackendConfig, BackendError, LoopbackPlatform, Stats, StopSignal};
use rxen_tap::PacketSocket;
use xen_loopback::{
    Hypervisor, LoopbackDomain, LoopbackEventChannels, LoopbackGrantShare, LoopbackSharedGrants,
};

pub const FE: DomId = 1;
pub const DEVID: u32 = 0;
pub const TIMEOUT: Duration = Duration::from_secs(20);
pub const GUEST_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x12, 0x34, 0x56];

/// Everything but the frontend: hypervisor, toolstack, backend.
pub struct Rig {
    dir: PathBuf,
    _d0: LoopbackDomain,
    pub d1: LoopbackDomain,
    pub xs0: XsClient<UnixStream>,
    pub stop: Arc<StopSignal>,
    pub backend: Option<JoinHandle<Result<(), BackendError>>>,
    pub stats: Arc<Stats>,
    pub be_path: String,
    pub fe_path: String,
    pub ifname: String,
}

impl Rig {
    /// Starts a backend offering `max_queues` queues on a TAP of its own.
    pub fn start(max_queues: u32) -> Rig {
        Rig::start_with(max_queues, |_| {})
    }

    /// [`Rig::start`], with `configure` applied to the backend's
    /// configuration last.
    pub fn start_with(max_queues: u32, configure: impl FnOnce(&mut BackendConfig)) -> Rig {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rnetback-e2e-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Hypervisor::bind(&dir).unwrap().spawn().unwrap();
        let d0 = LoopbackDomain::connect(&dir, 0).unwrap();
        let d1 = LoopbackDomain::connect(&dir, FE).unwrap();
        let xs0 = d0.xenstore().unwrap();
        let ifname = format!("rnb{}x{n}", std::process::id() % 100_000);
        let mut cfg = BackendConfig::new(0, FE, DEVID);
        cfg.ifname = Some(ifname.clone());
        cfg.max_queues = max_queues;
        cfg.poll_interval = Duration::from_millis(50);
        configure(&mut cfg);
        let be_path = cfg.backend_path();
        let fe_path = format!("/local/domain/{FE}/device/vif/{DEVID}");

        // The toolstack's part (xl network-attach): both directories, each
        // readable by the other end, and the MAC on both sides.
        let none = Transaction::NONE;
        let mac = rnetback::xenbus::format_mac(&GUEST_MAC);
        for (node, value) in [
            ("frontend", fe_path.as_str()),
            ("frontend-id", &FE.to_string()),
            ("online", "1"),
            ("state", "1"),
            ("mac", &mac),
            ("handle", &DEVID.to_string()),
            ("type", "vif"),
        ] {
            xs0.write(none, &format!("{be_path}/{node}"), value.as_bytes())
                .unwrap();
        }
        for (node, value) in [
            ("backend", be_path.as_str()),
            ("backend-id", "0"),
            ("handle", "0"),
            ("mac", &mac),
            ("state", "1"),
        ] {
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
            "/mac",
            "/handle",
            "/type",
        ] {
            xs0.set_perms(none, &format!("{be_path}{node}"), &perms(0, FE))
                .unwrap();
        }
        for node in ["", "/backend", "/backend-id", "/handle", "/mac", "/state"] {
            xs0.set_perms(none, &format!("{fe_path}{node}"), &perms(FE, 0))
                .unwrap();
        }

        let stop = Arc::new(StopSignal::new().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let backend = {
            let (d0, stop) = (d0.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut backend = Backend::new(LoopbackPlatform::from_domain(d0), cfg)?;
                let _ = tx.send(backend.stats());
                backend.run(&stop)
            })
        };
        let stats = match rx.recv_timeout(TIMEOUT) {
            Ok(stats) => stats,
            Err(_) => panic!(
                "the backend did not start: {:?}",
                backend.join().unwrap().err()
            ),
        };
        Rig {
            dir,
            _d0: d0,
            d1,
            xs0,
            stop,
            backend: Some(backend),
            stats,
            be_path,
            fe_path,
            ifname,
        }
    }

    pub fn backend_node(&self, node: &str) -> Option<String> {
        self.xs0
            .read(Transaction::NONE, &format!("{}/{node}", self.be_path))
            .ok()
            .map(|v| String::from_utf8(v).unwrap())
    }

    pub fn wait_backend_state(&self, state: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while self.backend_node("state").as_deref() != Some(state) {
            assert!(
                Instant::now() < deadline,
                "backend stayed in state {:?}, expected {state}",
                self.backend_node("state")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The host's side of the TAP, with virtio-net headers.
    pub fn host(&self) -> PacketSocket {
        PacketSocket::bind(&self.ifname, true).unwrap()
    }

    /// Stops the backend as SIGTERM does; it must end Closed.
    pub fn stop(mut self) {
        self.stop.stop();
        self.backend.take().unwrap().join().unwrap().unwrap();
        assert_eq!(
            self.backend_node("state").as_deref(),
            Some("6"),
            "the backend ends Closed"
        );
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One queue of the test netfront.
pub struct FrontQueue {
    pub tx_ring: LoopbackSharedGrants,
    pub rx_ring: LoopbackSharedGrants,
    pub tx: FrontRingState,
    pub rx: FrontRingState,
    pub tx_port: EvtchnPort,
    pub rx_port: EvtchnPort,
    /// The page posted with each receive request id.
    pub rx_pages: Vec<Option<LoopbackSharedGrants>>,
}

/// A minimal xen-netfront.
pub struct NetFront {
    pub xs: XsClient<UnixStream>,
    pub gs: LoopbackGrantShare,
    pub ev: LoopbackEventChannels,
    pub queues: Vec<FrontQueue>,
    pub fe_path: String,
    pub be_path: String,
}

/// A frame received by the test netfront.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxPacket {
    pub data: Vec<u8>,
    /// The responses, in order, extra info slots included.
    pub responses: Vec<NetifRxResponse>,
}

impl NetFront {
    /// Connects as netfront's `talk_to_netback` does once the backend is
    /// in InitWait: rings, event channels (split if `split`), features,
    /// then Connected. Posts `rx_posted` receive pages per queue.
    pub fn connect(rig: &Rig, queues: u32, split: bool, rx_posted: u16) -> NetFront {
        let xs = rig.d1.xenstore().unwrap();
        let gs = rig.d1.grant_share();
        let ev = rig.d1.event_channels().unwrap();
        rig.wait_backend_state("2");
        let none = Transaction::NONE;
        let read = |node: &str| {
            String::from_utf8(xs.read(none, &format!("{}/{node}", rig.be_path)).unwrap()).unwrap()
        };
        assert_eq!(
            read("feature-rx-copy"),
            "1",
            "netfront refuses a backend without feature-rx-copy"
        );
        assert!(queues <= read("multi-queue-max-queues").parse().unwrap());
        let split = split && read("feature-split-event-channels") == "1";
        let fe = rig.fe_path.clone();
        let write = |path: String, value: &str| xs.write(none, &path, value.as_bytes()).unwrap();
        let mut out = Vec::new();
        write(format!("{fe}/multi-queue-num-queues"), &queues.to_string());
        for q in 0..queues {
            let tx_ring = gs.share(0, 1, true).unwrap();
            let rx_ring = gs.share(0, 1, true).unwrap();
            FrontRing::<NetifTxRequest, NetifTxResponse>::init_shared(
                tx_ring.memory().ring_mem().unwrap(),
            )
            .unwrap();
            FrontRing::<NetifRxRequest, NetifRxResponse>::init_shared(
                rx_ring.memory().ring_mem().unwrap(),
            )
            .unwrap();
            let tx_port = ev.alloc_unbound(0).unwrap();
            let rx_port = if split {
                ev.alloc_unbound(0).unwrap()
            } else {
                tx_port
            };
            let dir = if queues == 1 {
                fe.clone()
            } else {
                format!("{fe}/queue-{q}")
            };
            write(format!("{dir}/tx-ring-ref"), &tx_ring.refs()[0].to_string());
            write(format!("{dir}/rx-ring-ref"), &rx_ring.refs()[0].to_string());
            if split {
                write(format!("{dir}/event-channel-tx"), &tx_port.to_string());
                write(format!("{dir}/event-channel-rx"), &rx_port.to_string());
            } else {
                write(format!("{dir}/event-channel"), &tx_port.to_string());
            }
            out.push(FrontQueue {
                tx_ring,
                rx_ring,
                tx: FrontRingState::default(),
                rx: FrontRingState::default(),
                tx_port,
                rx_port,
                rx_pages: (0..256).map(|_| None).collect(),
            });
        }
        for (node, value) in [
            ("request-rx-copy", "1"),
            ("feature-rx-notify", "1"),
            ("feature-sg", "1"),
            ("feature-gso-tcpv4", "1"),
            ("feature-gso-tcpv6", "1"),
            ("feature-ipv6-csum-offload", "1"),
        ] {
            write(format!("{fe}/{node}"), value);
        }
        write(format!("{fe}/state"), "4");
        let mut front = NetFront {
            xs,
            gs,
            ev,
            queues: out,
            fe_path: fe,
            be_path: rig.be_path.clone(),
        };
        rig.wait_backend_state("4");
        for q in 0..front.queues.len() {
            front.post_rx(q, rx_posted);
        }
        front
    }

    /// Posts `count` fresh pages on queue `q`'s receive ring.
    pub fn post_rx(&mut self, q: usize, count: u16) {
        let queue = &mut self.queues[q];
        let mem = queue.rx_ring.memory().ring_mem().unwrap();
        let mut ring = FrontRing::<NetifRxRequest, NetifRxResponse>::resume(mem, queue.rx).unwrap();
        for _ in 0..count {
            let id = (ring.req_prod_pvt().0 % ring.size()) as u16;
            let page = self.gs.share(0, 1, true).unwrap();
            ring.put_request(&NetifRxRequest {
                id,
                pad: 0,
                gref: page.refs()[0],
            })
            .unwrap();
            queue.rx_pages[usize::from(id)] = Some(page);
        }
        if ring.push_requests_and_check_notify().unwrap() {
            self.ev.notify(queue.rx_port).unwrap();
        }
        queue.rx = ring.state();
    }

    /// Puts raw transmit slots on queue `q` and pushes them.
    pub fn push_tx(&mut self, q: usize, slots: &[NetifTxRequest]) {
        let queue = &mut self.queues[q];
        let mem = queue.tx_ring.memory().ring_mem().unwrap();
        let mut ring = FrontRing::<NetifTxRequest, NetifTxResponse>::resume(mem, queue.tx).unwrap();
        for slot in slots {
            ring.put_request(slot).unwrap();
        }
        if ring.push_requests_and_check_notify().unwrap() {
            self.ev.notify(queue.tx_port).unwrap();
        }
        queue.tx = ring.state();
    }

    /// Waits up to `timeout` for `count` transmit responses on queue `q`.
    pub fn tx_responses(
        &mut self,
        q: usize,
        count: usize,
        timeout: Duration,
    ) -> Vec<NetifTxResponse> {
        let queue = &mut self.queues[q];
        let mem = queue.tx_ring.memory().ring_mem().unwrap();
        let mut ring = FrontRing::<NetifTxRequest, NetifTxResponse>::resume(mem, queue.tx).unwrap();
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < count && Instant::now() < deadline {
            match ring.consume_response().unwrap() {
                Some(rsp) => out.push(rsp),
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        queue.tx = ring.state();
        out
    }

    /// Shares read-only pages holding `frame` split into `chunks` byte
    /// counts (the first at `offset`), and returns the slots netfront
    /// would put on the ring, `flags` on the first.
    pub fn tx_slots(
        &self,
        frame: &[u8],
        chunks: &[usize],
        offset: u16,
        flags: u16,
        first_id: u16,
    ) -> (Vec<NetifTxRequest>, Vec<LoopbackSharedGrants>) {
        assert_eq!(chunks.iter().sum::<usize>(), frame.len());
        let mut slots = Vec::new();
        let mut pages = Vec::new();
        let mut at = 0;
        for (i, &len) in chunks.iter().enumerate() {
            let page = self.gs.share(0, 1, false).unwrap();
            let off = if i == 0 { offset } else { 0 };
            page.memory()
                .write(usize::from(off), &frame[at..at + len])
                .unwrap();
            let more = if i + 1 < chunks.len() { 1 << 2 } else { 0 };
            let size = if i == 0 {
                frame.len() as u16
            } else {
                len as u16
            };
            let f = if i == 0 { flags | more } else { more };
            slots.push(NetifTxRequest {
                gref: page.refs()[0],
                offset: off,
                flags: f,
                id: first_id + i as u16,
                size,
            });
            pages.push(page);
            at += len;
        }
        (slots, pages)
    }

    /// Waits up to `timeout` for a frame on queue `q`'s receive ring that
    /// `wanted` accepts (others, such as the host's IPv6 chatter, are
    /// skipped), reposting the pages it used.
    pub fn recv(
        &mut self,
        q: usize,
        timeout: Duration,
        wanted: impl Fn(&[u8]) -> bool,
    ) -> Option<RxPacket> {
        let deadline = Instant::now() + timeout;
        loop {
            let packet = self.recv_one(q, deadline)?;
            let used = packet.responses.len() as u16;
            self.post_rx(q, used);
            if wanted(&packet.data) {
                return Some(packet);
            }
        }
    }

    fn recv_one(&mut self, q: usize, deadline: Instant) -> Option<RxPacket> {
        let queue = &mut self.queues[q];
        let mem = queue.rx_ring.memory().ring_mem().unwrap();
        let mut ring = FrontRing::<NetifRxRequest, NetifRxResponse>::resume(mem, queue.rx).unwrap();
        let mut packet = RxPacket {
            data: Vec::new(),
            responses: Vec::new(),
        };
        let mut extra_next = false;
        loop {
            let Some(rsp) = ring.consume_response().unwrap() else {
                if Instant::now() > deadline {
                    assert!(
                        packet.responses.is_empty(),
                        "a frame was cut short: {:?}",
                        packet.responses
                    );
                    queue.rx = ring.state();
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            packet.responses.push(rsp);
            if extra_next {
                // An extra-info slot; its page goes back unused.
                extra_next = false;
                if packet.responses.len() == 2 && packet.responses[0].flags & (1 << 2) == 0 {
                    break;
                }
                continue;
            }
            assert!(rsp.status >= 0, "receive error {rsp:?}");
            let page = queue.rx_pages[usize::from(rsp.id)]
                .take()
                .expect("a response for a page not posted");
            let mut bytes = vec![0u8; rsp.status as usize];
            page.memory()
                .read(usize::from(rsp.offset), &mut bytes)
                .unwrap();
            packet.data.extend(bytes);
            if packet.responses.len() == 1 && rsp.flags & (1 << 3) != 0 {
                extra_next = true;
                continue;
            }
            if rsp.flags & (1 << 2) == 0 {
                break;
            }
        }
        queue.rx = ring.state();
        Some(packet)
    }

    /// Moves the frontend to `state` as netfront does on close (5, 6) or
    /// reload (1).
    pub fn set_state(&self, state: &str) {
        self.xs
            .write(
                Transaction::NONE,
                &format!("{}/state", self.fe_path),
                state.as_bytes(),
            )
            .unwrap();
    }
}
