//! rblkback serving a per-guest qcow2 overlay over a shared raw base, end
//! to end on the loopback platform: a hypervisor thread, rblkback as
//! domain 0, the test as the toolstack, and rblkfront as domain 1's
//! blkfront. What the guest writes lands in the overlay (which then passes
//! `qemu-img check` and `qemu-img compare`), and the base is not touched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hypercall_abi::platform::{Transaction, Xenstore, XsPerm, XsPermAccess};
use hypercall_abi::xen::DomId;
use hypercall_abi::xenstore::XsClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rblkback::{
    create_overlay, open_image, Backend, BackendConfig, ImageFormat, LoopbackPlatform, RawDiskOptions, StopSignal,
};
use rblkfront::platform::Loopback;
use rblkfront::{BlockFrontend, FrontendConfig};
use xen_loopback::{Hypervisor, LoopbackDomain, LoopbackEventChannels, LoopbackGrantShare};

const FE: DomId = 1;
const DEVID: u32 = 51712;

type Front = BlockFrontend<LoopbackGrantShare, LoopbackEventChannels, XsClient<UnixStream>>;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts a hypervisor in `dir` and creates the vbd's xenstore
/// directories as `xl block-attach` does; returns domain 0.
fn toolstack(dir: &Path) -> LoopbackDomain {
    Hypervisor::bind(dir).unwrap().spawn().unwrap();
    let d0 = LoopbackDomain::connect(dir, 0).unwrap();
    let xs0 = d0.xenstore().unwrap();
    let be = format!("/local/domain/0/backend/vbd/{FE}/{DEVID}");
    let fe = format!("/local/domain/{FE}/device/vbd/{DEVID}");
    let none = Transaction::NONE;
    for (node, value) in [("frontend", fe.as_str()), ("frontend-id", &FE.to_string()), ("online", "1"), ("state", "1")]
    {
        xs0.write(none, &format!("{be}/{node}"), value.as_bytes()).unwrap();
    }
    for (node, value) in
        [("backend", be.as_str()), ("backend-id", "0"), ("virtual-device", &DEVID.to_string()), ("state", "1")]
    {
        xs0.write(none, &format!("{fe}/{node}"), value.as_bytes()).unwrap();
    }
    let perms = |owner: DomId, reader: DomId| {
        [XsPerm { domid: owner, access: XsPermAccess::None }, XsPerm { domid: reader, access: XsPermAccess::Read }]
    };
    for node in ["", "/frontend", "/frontend-id", "/online", "/state"] {
        xs0.set_perms(none, &format!("{be}{node}"), &perms(0, FE)).unwrap();
    }
    for node in ["", "/backend", "/backend-id", "/virtual-device", "/state"] {
        xs0.set_perms(none, &format!("{fe}{node}"), &perms(FE, 0)).unwrap();
    }
    d0
}

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run qemu-img: {e}; install Debian's qemu-utils"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "qemu-img {args:?} failed:\n{text}");
    text
}

#[test]
fn a_guest_writes_through_rblkback_into_its_qcow2_overlay() {
    let seed = std::env::var("RBLKBACK_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("seed {seed} (set RBLKBACK_TEST_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let shm = Path::new("/dev/shm");
    let root = if shm.is_dir() { shm.to_owned() } else { std::env::temp_dir() };
    let dir = TempDir(root.join(format!("rblkback-qcow2-e2e-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let size = 8usize << 20;
    let base = dir.0.join("base.img");
    let base_data: Vec<u8> = (0..size).map(|i| (i / 512) as u8 ^ 0x5a).collect();
    std::fs::write(&base, &base_data).unwrap();
    let overlay = dir.0.join("guest1.qcow2");
    create_overlay(&overlay, Path::new("base.img"), Some(ImageFormat::Raw)).unwrap();
    let hv = dir.0.join("hv");
    std::fs::create_dir_all(&hv).unwrap();
    let d0 = toolstack(&hv);
    let stop = Arc::new(StopSignal::new().unwrap());
    let backend = {
        let (stop, overlay) = (Arc::clone(&stop), overlay.clone());
        std::thread::spawn(move || {
            let disk = open_image(&overlay, Some(ImageFormat::Qcow2), RawDiskOptions::default()).unwrap();
            let mut cfg = BackendConfig::new(0, FE, DEVID);
            cfg.poll_interval = Duration::from_millis(50);
            let mut backend = Backend::new(LoopbackPlatform::from_domain(d0), Arc::new(disk), cfg)?;
            backend.run(&stop)
        })
    };
    let mut cfg = FrontendConfig::new(DEVID);
    cfg.timeout = Duration::from_secs(10);
    let (grants, evtchn, store) = Loopback::from_domain(LoopbackDomain::connect(&hv, FE).unwrap()).handles().unwrap();
    let mut dev: Front = BlockFrontend::new(grants, evtchn, store, cfg).unwrap();
    let mut model = base_data.clone();

    dev.connect().unwrap();
    let sectors = (size / 512) as u64;
    for len in [512, 4096, 3 * 4096 + 1024, 44 << 10, 64 << 10, 1 << 20, 100 << 10] {
        let nr = (len / 512) as u64;
        let sector = rng.gen_range(0..=sectors - nr);
        let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        dev.write(sector, &data).unwrap();
        model[sector as usize * 512..][..len].copy_from_slice(&data);
    }
    dev.flush().unwrap();
    let granularity = u64::from(dev.info().unwrap().discard.unwrap().granularity);
    let (start, count) = (2 * granularity / 512, granularity / 512);
    dev.discard(start, count).unwrap();
    model[(start * 512) as usize..((start + count) * 512) as usize].fill(0);
    dev.flush().unwrap();
    let mut whole = vec![0u8; size];
    dev.read(0, &mut whole).unwrap();
    dev.disconnect().unwrap();
    drop(dev);
    stop.stop();
    backend.join().unwrap().unwrap();

    assert_eq!(granularity, 65536, "discard works in whole clusters");
    assert!(whole == model, "the guest reads its writes over the base, and zeroes where it discarded");
    assert!(std::fs::read(&base).unwrap() == base_data, "the base is byte-identical");
    let expected = dir.0.join("expected.raw");
    std::fs::write(&expected, &model).unwrap();
    let o = overlay.to_str().unwrap();
    assert!(qemu_img(&["check", "-f", "qcow2", o]).contains("No errors were found"));
    qemu_img(&["compare", "-f", "qcow2", "-F", "raw", o, expected.to_str().unwrap()]);
}
