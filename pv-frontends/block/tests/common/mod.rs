//! A loopback rig for the frontend's tests: a hypervisor thread, and the
//! test as the toolstack (domain 0) that creates a vbd for domain 1.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hypercall_abi::platform::{Transaction, Xenstore, XsPerm, XsPermAccess};
use hypercall_abi::xen::DomId;
use hypercall_abi::xenstore::XsClient;
use rblkfront::platform::Loopback;
use rblkfront::{BlockFrontend, FrontendConfig};
use xen_loopback::{Hypervisor, LoopbackDomain, LoopbackEventChannels, LoopbackGrantShare};

pub const FE: DomId = 1;
pub const DEVID: u32 = 51712;
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub type Front = BlockFrontend<LoopbackGrantShare, LoopbackEventChannels, XsClient<UnixStream>>;

/// The hypervisor, domain 0 as toolstack, and the vbd's directories.
pub struct Toolstack {
    pub dir: PathBuf,
    pub d0: LoopbackDomain,
    pub xs0: XsClient<UnixStream>,
    pub be_path: String,
    pub fe_path: String,
    /// Domain 1, connected by the first frontend made (so that a test can
    /// leave domain 1 to another process instead).
    d1: OnceLock<LoopbackDomain>,
}

impl Toolstack {
    /// Starts a hypervisor and creates the vbd's directories as `xl
    /// block-attach` does, each readable by the other end.
    pub fn start(name: &str) -> Toolstack {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rblkfront-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Hypervisor::bind(&dir).unwrap().spawn().unwrap();
        let d0 = LoopbackDomain::connect(&dir, 0).unwrap();
        let xs0 = d0.xenstore().unwrap();
        let be_path = format!("/local/domain/0/backend/vbd/{FE}/{DEVID}");
        let fe_path = format!("/local/domain/{FE}/device/vbd/{DEVID}");
        let none = Transaction::NONE;
        for (node, value) in
            [("frontend", fe_path.as_str()), ("frontend-id", &FE.to_string()), ("online", "1"), ("state", "1")]
        {
            xs0.write(none, &format!("{be_path}/{node}"), value.as_bytes()).unwrap();
        }
        for (node, value) in
            [("backend", be_path.as_str()), ("backend-id", "0"), ("virtual-device", &DEVID.to_string()), ("state", "1")]
        {
            xs0.write(none, &format!("{fe_path}/{node}"), value.as_bytes()).unwrap();
        }
        let perms = |owner: DomId, reader: DomId| {
            [XsPerm { domid: owner, access: XsPermAccess::None }, XsPerm { domid: reader, access: XsPermAccess::Read }]
        };
        for node in ["", "/frontend", "/frontend-id", "/online", "/state"] {
            xs0.set_perms(none, &format!("{be_path}{node}"), &perms(0, FE)).unwrap();
        }
        for node in ["", "/backend", "/backend-id", "/virtual-device", "/state"] {
            xs0.set_perms(none, &format!("{fe_path}{node}"), &perms(FE, 0)).unwrap();
        }
        Toolstack { dir, d0, xs0, be_path, fe_path, d1: OnceLock::new() }
    }

    pub fn node(&self, path: &str) -> Option<String> {
        self.xs0.read(Transaction::NONE, path).ok().map(|v| String::from_utf8(v).unwrap())
    }

    pub fn backend_node(&self, node: &str) -> Option<String> {
        self.node(&format!("{}/{node}", self.be_path))
    }

    pub fn frontend_node(&self, node: &str) -> Option<String> {
        self.node(&format!("{}/{node}", self.fe_path))
    }

    pub fn wait_node(&self, path: &str, value: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while self.node(path).as_deref() != Some(value) {
            assert!(Instant::now() < deadline, "{path} stayed {:?}, expected {value}", self.node(path));
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Domain 1's frontend for the vbd (not connected).
    pub fn frontend(&self, cfg: FrontendConfig) -> Front {
        let d1 = self.d1.get_or_init(|| LoopbackDomain::connect(&self.dir, FE).unwrap());
        let platform = Loopback::from_domain(d1.clone());
        let (grants, evtchn, store) = platform.handles().unwrap();
        BlockFrontend::new(grants, evtchn, store, cfg).unwrap()
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
