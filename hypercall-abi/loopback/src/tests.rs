//! Tests of the whole platform in one process: a hypervisor thread and
//! several domains connected to it. The same paths between processes are
//! tested in `tests/multiprocess.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hypercall_abi::platform::{
    EventChannels, EvtchnError, GrantCopyOp, GrantCopyPtr, GrantError, GrantMap, GrantShare,
    MappedGrants, SharedGrants, SharedMemoryError, Transaction, Xenstore, XsPerm, XsPermAccess,
};
use hypercall_abi::xen::grant_table::{GNTST_BAD_GNTREF, GNTST_PERMISSION_DENIED};
use hypercall_abi::xen::PAGE_SIZE;

use crate::grant::map_request;
use crate::proto::{HvError, Reply, Request, MAX_MESSAGE};
use crate::sys::doorbell::readable;
use crate::sys::mem::Mapping;
use crate::sys::seqpacket::SeqPacket;
use crate::{Hypervisor, LoopbackDomain, LoopbackError, SOCKET_NAME};

/// A hypervisor serving a fresh directory, removed at the end.
struct Hv(PathBuf);

impl Hv {
    fn start() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xen-loopback-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Hypervisor::bind(&dir).unwrap().spawn().unwrap();
        Hv(dir)
    }

    fn dir(&self) -> &Path {
        &self.0
    }

    fn domain(&self, domid: u16) -> LoopbackDomain {
        LoopbackDomain::connect(&self.0, domid).unwrap()
    }
}

impl Drop for Hv {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn maps_follow_the_grant_table() {
    let hv = Hv::start();
    let (d0, d1, d2) = (hv.domain(0), hv.domain(1), hv.domain(2));
    let shared = d1.grant_share().share(0, 2, true).unwrap();
    shared
        .memory()
        .write(PAGE_SIZE + 10, b"from domain 1")
        .unwrap();

    let mapped = d0.grant_map().map(1, shared.refs(), true).unwrap();
    let mut buf = [0u8; 13];
    mapped.memory().read(PAGE_SIZE + 10, &mut buf).unwrap();
    assert_eq!(&buf, b"from domain 1");
    mapped.memory().write(0, b"from domain 0").unwrap();
    shared.memory().read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"from domain 0", "both domains see the same page");

    // Only the grantee may map, only granted refs exist.
    assert!(matches!(
        d2.grant_map().map(1, shared.refs(), false),
        Err(GrantError::NotGranted { domid: 1, .. })
    ));
    assert!(matches!(
        d0.grant_map().map(1, &[9999], false),
        Err(GrantError::NotGranted { gref: 9999, .. })
    ));
    assert!(matches!(
        d0.grant_map().map(2, shared.refs(), false),
        Err(GrantError::NotGranted { domid: 2, .. })
    ));
    // Pages in order: mapping the refs reversed swaps the pages.
    let reversed: Vec<_> = shared.refs().iter().rev().copied().collect();
    let swapped = d0.grant_map().map(1, &reversed, false).unwrap();
    swapped.memory().read(10, &mut buf).unwrap();
    assert_eq!(&buf, b"from domain 1");
    drop(swapped);

    // Ending access while mapped fails; the grant then lives until unmapped.
    let refs = shared.refs().to_vec();
    assert!(matches!(
        d1.grant_share().end_access(shared),
        Err(GrantError::InUse(_))
    ));
    mapped.memory().write(0, b"still mapped!").unwrap();
    drop(mapped);
    assert!(matches!(
        d0.grant_map().map(1, &refs, false),
        Err(GrantError::NotGranted { .. })
    ));

    let s = d1.grant_share().share(0, 1, true).unwrap();
    let refs = s.refs().to_vec();
    d1.grant_share().end_access(s).unwrap();
    assert!(
        matches!(
            d0.grant_map().map(1, &refs, false),
            Err(GrantError::NotGranted { .. })
        ),
        "revoked grant"
    );
    assert!(matches!(
        d1.grant_share().share(0, 0, true),
        Err(GrantError::Invalid(_))
    ));
}

#[test]
fn read_only_grants_are_read_only_for_the_kernel_too() {
    let hv = Hv::start();
    let (d0, d1) = (hv.domain(0), hv.domain(1));
    let shared = d1.grant_share().share(0, 1, false).unwrap();
    shared.memory().write(0, b"read me").unwrap();
    assert!(matches!(
        d0.grant_map().map(1, shared.refs(), true),
        Err(GrantError::ReadOnly { domid: 1, .. })
    ));

    let mapped = d0.grant_map().map(1, shared.refs(), false).unwrap();
    let mut buf = [0u8; 7];
    mapped.memory().read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"read me");
    assert_eq!(
        mapped.memory().write(0, b"x"),
        Err(SharedMemoryError::ReadOnly)
    );

    // Even with the descriptor in hand, the kernel refuses a writable mapping.
    let link = Arc::clone(&d0.grant_map().link);
    let (_unmap, pages, fds) = map_request(&link, 1, shared.refs(), false).unwrap();
    let (fd, offset) = pages[0];
    let err = Mapping::shared(fds[fd].as_fd(), offset, PAGE_SIZE, true).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    assert!(Mapping::shared(fds[fd].as_fd(), offset, PAGE_SIZE, false).is_ok());
}

#[test]
fn grant_copy_is_checked_like_map() {
    let hv = Hv::start();
    let (d0, d1) = (hv.domain(0), hv.domain(1));
    let rw = d1.grant_share().share(0, 1, true).unwrap();
    let ro = d1.grant_share().share(0, 1, false).unwrap();
    rw.memory().write(100, b"copy me").unwrap();
    let mut out = [0u8; 7];
    let mut ops = [
        GrantCopyOp {
            source: GrantCopyPtr::Grant {
                domid: 1,
                gref: rw.refs()[0],
                offset: 100,
            },
            dest: GrantCopyPtr::LocalMut(&mut out),
            len: 7,
            status: Ok(()),
        },
        GrantCopyOp {
            source: GrantCopyPtr::Local(b"written"),
            dest: GrantCopyPtr::Grant {
                domid: 1,
                gref: rw.refs()[0],
                offset: 4090,
            },
            len: 6,
            status: Ok(()),
        },
        GrantCopyOp {
            source: GrantCopyPtr::Local(b"nope"),
            dest: GrantCopyPtr::Grant {
                domid: 1,
                gref: ro.refs()[0],
                offset: 0,
            },
            len: 4,
            status: Ok(()),
        },
        GrantCopyOp {
            source: GrantCopyPtr::Grant {
                domid: 1,
                gref: 4321,
                offset: 0,
            },
            dest: GrantCopyPtr::LocalMut(&mut [0u8; 4]),
            len: 4,
            status: Ok(()),
        },
        GrantCopyOp {
            source: GrantCopyPtr::Local(b"too long"),
            dest: GrantCopyPtr::Grant {
                domid: 1,
                gref: rw.refs()[0],
                offset: 4095,
            },
            len: 8,
            status: Ok(()),
        },
    ];
    d0.grant_map().copy(&mut ops).unwrap();
    let statuses: Vec<_> = ops.iter().map(|o| o.status).collect();
    assert_eq!(
        &statuses[..4],
        [
            Ok(()),
            Ok(()),
            Err(GNTST_PERMISSION_DENIED),
            Err(GNTST_BAD_GNTREF)
        ]
    );
    assert!(
        statuses[4].is_err(),
        "a segment crossing the page end is refused"
    );
    assert_eq!(&out, b"copy me");
    let mut page_end = [0u8; 6];
    rw.memory().read(4090, &mut page_end).unwrap();
    assert_eq!(&page_end, b"writte");
    // The temporary mappings are gone, so access can end.
    d1.grant_share().end_access(rw).unwrap();
}

#[test]
fn events_flow_both_ways_and_stay_masked_until_unmasked() {
    let hv = Hv::start();
    let (d0, d1) = (hv.domain(0), hv.domain(1));
    let (e0, e1) = (d0.event_channels().unwrap(), d1.event_channels().unwrap());
    let p1 = e1.alloc_unbound(0).unwrap();
    assert!(matches!(
        hv.domain(2)
            .event_channels()
            .unwrap()
            .bind_interdomain(1, p1),
        Err(EvtchnError::BadRemote { .. })
    ));
    let p0 = e0.bind_interdomain(1, p1).unwrap();
    assert!(e0.is_connected(p0).unwrap() && e1.is_connected(p1).unwrap());

    assert_eq!(e1.pending().unwrap(), None);
    e0.notify(p0).unwrap();
    assert!(
        readable(e1.fd(), 1000),
        "the handle's fd is readable with an event pending"
    );
    assert_eq!(e1.pending().unwrap(), Some(p1));
    e0.notify(p0).unwrap();
    assert!(!readable(e1.fd(), 50), "a fired port is masked");
    assert_eq!(e1.pending().unwrap(), None);
    e1.unmask(p1).unwrap();
    assert_eq!(
        e1.wait(Some(Duration::from_secs(1))).unwrap(),
        Some(p1),
        "the event that came while masked"
    );
    e1.unmask(p1).unwrap();

    e1.notify(p1).unwrap(); // first notify from this side: through the hypervisor
    assert_eq!(e0.wait(Some(Duration::from_secs(1))).unwrap(), Some(p0));
    e0.unmask(p0).unwrap();
    e1.notify(p1).unwrap(); // then directly
    assert_eq!(e0.wait(Some(Duration::from_secs(1))).unwrap(), Some(p0));
    e0.unmask(p0).unwrap();

    // Closing one end: the other is woken, unbound, and notifying it is harmless.
    e0.close(p0).unwrap();
    assert_eq!(e1.wait(Some(Duration::from_secs(1))).unwrap(), Some(p1));
    assert!(!e1.is_connected(p1).unwrap());
    e1.notify(p1).unwrap();
    assert!(matches!(e0.notify(p0), Err(EvtchnError::NotBound(_))));
    // The port is offered to domain 0 again, and can be rebound.
    let p0 = e0.bind_interdomain(1, p1).unwrap();
    e1.unmask(p1).unwrap();
    e1.notify(p1).unwrap();
    assert_eq!(e0.wait(Some(Duration::from_secs(1))).unwrap(), Some(p0));
}

#[test]
fn a_destroyed_domain_leaves_peers_working() {
    let hv = Hv::start();
    let d0 = hv.domain(0);
    let e0 = d0.event_channels().unwrap();
    let (mapped, p0) = {
        let d1 = hv.domain(1);
        let e1 = d1.event_channels().unwrap();
        let shared = d1.grant_share().share(0, 1, true).unwrap();
        shared.memory().write(0, b"outlives me").unwrap();
        let p1 = e1.alloc_unbound(0).unwrap();
        let p0 = e0.bind_interdomain(1, p1).unwrap();
        let mapped = d0.grant_map().map(1, shared.refs(), true).unwrap();
        (mapped, p0)
        // d1 and everything made from it go here: the domain is destroyed.
        // (tests/multiprocess.rs kills a domain process instead.)
    };
    assert_eq!(
        e0.wait(Some(Duration::from_secs(2))).unwrap(),
        Some(p0),
        "the peer's death rings us"
    );
    assert!(!e0.is_connected(p0).unwrap());
    e0.notify(p0).unwrap();
    let mut buf = [0u8; 11];
    mapped.memory().read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"outlives me");
    mapped.memory().write(0, b"still mine!").unwrap();
    // The id is free again once the hypervisor has cleaned up.
    let mut again = None;
    for _ in 0..100 {
        match LoopbackDomain::connect(hv.dir(), 1) {
            Ok(d) => {
                again = Some(d);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    assert!(again.is_some());
}

#[test]
fn the_hypervisor_survives_garbage() {
    let hv = Hv::start();
    let path = hv.dir().join(SOCKET_NAME);
    let mut buf = vec![0u8; MAX_MESSAGE];
    let reply = |s: &SeqPacket, buf: &mut Vec<u8>| {
        let got = s.recv(buf).unwrap();
        if got.len == 0 {
            None
        } else {
            Some(Reply::decode(&buf[..got.len]).unwrap())
        }
    };

    // Junk instead of a hello.
    let s = SeqPacket::connect(&path).unwrap();
    s.send(b"\xff\xff\xff\xffjunk", &[]).unwrap();
    assert_eq!(reply(&s, &mut buf), Some(Reply::Error(HvError::Protocol)));
    // A hello for an impossible domain, and one for a domain in use.
    let s = SeqPacket::connect(&path).unwrap();
    s.send(&Request::Hello { domid: 0x7ff0 }.encode(), &[])
        .unwrap();
    assert!(matches!(
        reply(&s, &mut buf),
        Some(Reply::Error(HvError::BadDomid(_)))
    ));
    let d1 = hv.domain(1);
    assert!(matches!(
        LoopbackDomain::connect(hv.dir(), 1),
        Err(LoopbackError::Refused(_))
    ));
    // A domain that sends junk after its hello is destroyed.
    let s = SeqPacket::connect(&path).unwrap();
    s.send(&Request::Hello { domid: 5 }.encode(), &[]).unwrap();
    assert!(matches!(reply(&s, &mut buf), Some(Reply::Hello { .. })));
    s.send(&[3, 0, 0, 0, 0xff, 0xff, 0xff, 0xff], &[]).unwrap();
    assert_eq!(reply(&s, &mut buf), Some(Reply::Error(HvError::Protocol)));
    assert_eq!(reply(&s, &mut buf), None, "and disconnected");
    // Requests with the wrong descriptors are refused without harm.
    let s = SeqPacket::connect(&path).unwrap();
    s.send(&Request::Hello { domid: 6 }.encode(), &[]).unwrap();
    reply(&s, &mut buf);
    let not_memfd = std::fs::File::open("/dev/null").unwrap();
    s.send(
        &Request::GrantShare {
            grantee: 1,
            count: 1,
            readonly: false,
        }
        .encode(),
        &[not_memfd.as_fd()],
    )
    .unwrap();
    assert!(matches!(
        reply(&s, &mut buf),
        Some(Reply::Error(HvError::Invalid(_)))
    ));
    s.send(
        &Request::EvtchnAllocUnbound { remote: 1 }.encode(),
        &[not_memfd.as_fd()],
    )
    .unwrap();
    assert!(matches!(
        reply(&s, &mut buf),
        Some(Reply::Error(HvError::Invalid(_)))
    ));
    s.send(&Request::EvtchnAllocUnbound { remote: 1 }.encode(), &[])
        .unwrap();
    assert_eq!(reply(&s, &mut buf), Some(Reply::Error(HvError::Protocol)));
    s.send(&Request::GrantUnmap { handle: 12345 }.encode(), &[])
        .unwrap();
    assert_eq!(reply(&s, &mut buf), Some(Reply::Error(HvError::Protocol)));

    // Everyone else is fine.
    let d0 = hv.domain(0);
    let shared = d1.grant_share().share(0, 1, true).unwrap();
    assert!(d0.grant_map().map(1, shared.refs(), true).is_ok());
}

#[test]
fn xenstore_speaks_the_wire_protocol_with_xs_client() {
    let hv = Hv::start();
    let (d0, d1, d2) = (hv.domain(0), hv.domain(1), hv.domain(2));
    let (x0, x1, x2) = (
        d0.xenstore().unwrap(),
        d1.xenstore().unwrap(),
        d2.xenstore().unwrap(),
    );
    let none = Transaction::NONE;
    assert_eq!(x1.get_domain_path(1).unwrap(), "/local/domain/1");

    x1.write(none, "device/echo/0/state", b"1").unwrap();
    assert_eq!(
        x0.read(none, "/local/domain/1/device/echo/0/state")
            .unwrap(),
        b"1"
    );
    assert_eq!(x1.directory(none, "device/echo").unwrap(), ["0"]);
    x1.mkdir(none, "data").unwrap();
    assert_eq!(x1.read(none, "data").unwrap(), b"");

    // Permissions follow the connection's domain.
    assert_eq!(
        x2.read(none, "/local/domain/1/device/echo/0/state")
            .unwrap_err()
            .errno(),
        Some(libc::EACCES)
    );
    let perms = [
        XsPerm {
            domid: 1,
            access: XsPermAccess::None,
        },
        XsPerm {
            domid: 2,
            access: XsPermAccess::Read,
        },
    ];
    x1.set_perms(none, "device/echo/0/state", &perms).unwrap();
    assert_eq!(
        x2.get_perms(none, "/local/domain/1/device/echo/0/state")
            .unwrap(),
        perms
    );
    assert_eq!(
        x2.read(none, "/local/domain/1/device/echo/0/state")
            .unwrap(),
        b"1"
    );
    assert_eq!(
        x2.write(none, "/local/domain/1/device/echo/0/state", b"x")
            .unwrap_err()
            .errno(),
        Some(libc::EACCES)
    );

    // Watches fire on registration and on changes below.
    x0.watch("/local/domain/1/device", "dev").unwrap();
    let ev = x0
        .read_watch(Some(Duration::from_secs(2)))
        .unwrap()
        .unwrap();
    assert_eq!(
        (ev.path.as_str(), ev.token.as_str()),
        ("/local/domain/1/device", "dev")
    );
    x1.write(none, "device/echo/0/ring-ref", b"8").unwrap();
    let ev = x0
        .read_watch(Some(Duration::from_secs(2)))
        .unwrap()
        .unwrap();
    assert_eq!(ev.path, "/local/domain/1/device/echo/0/ring-ref");
    x1.write(none, "data/x", b"").unwrap();
    assert_eq!(
        x0.read_watch(Some(Duration::from_millis(100))).unwrap(),
        None,
        "not below the watch"
    );

    // Transactions: isolated, committed, or EAGAIN on conflict.
    let t = x1.transaction_start().unwrap();
    x1.write(t, "data/x", b"in tx").unwrap();
    assert_eq!(x1.read(none, "data/x").unwrap(), b"");
    x1.transaction_end(t, true).unwrap();
    assert_eq!(x1.read(none, "data/x").unwrap(), b"in tx");
    let t = x1.transaction_start().unwrap();
    assert_eq!(x1.read(t, "data/x").unwrap(), b"in tx");
    x0.write(none, "/local/domain/1/data/x", b"meddled")
        .unwrap();
    x1.write(t, "data/y", b"").unwrap();
    assert!(x1.transaction_end(t, true).unwrap_err().is_again());
    assert!(x1.read(none, "data/y").unwrap_err().is_not_found());

    // A large directory comes back in parts.
    for i in 0..400 {
        x1.write(none, &format!("big/entry-number-{i:04}"), b"")
            .unwrap();
    }
    assert_eq!(x1.directory(none, "big").unwrap().len(), 400);
    x1.rm(none, "big").unwrap();
    assert!(x1.read(none, "big").unwrap_err().is_not_found());
}
