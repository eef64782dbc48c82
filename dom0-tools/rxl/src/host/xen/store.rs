//! xenstore as the Xen host uses it: reads that tell a missing node from a
//! failure, transactions retried while they conflict, libxl's removal of
//! a path with its emptied parents, and waiting for nodes to change.
//!
//! Everything here takes any [`Xenstore`], so that the tests run it
//! against a real store (rxenstored's engine over a socket) without Xen.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hypercall_abi::platform::{Transaction, Xenstore, XsError, XsPerm, XsPermAccess};

use crate::host::{DomId, HostError};

/// Most attempts at a transaction that keeps conflicting with other
/// writers before giving up.
const MAX_TRANSACTION_ATTEMPTS: u32 = 64;

/// How long [`wait_for`] sleeps on the watch before looking again even
/// without an event (a daemon that drops events, or a condition that no
/// node reflects, such as a process exiting).
const WAIT_POLL: Duration = Duration::from_millis(250);

/// The error for a failed request on `path`.
pub(crate) fn failed(what: &str, path: &str, e: XsError) -> HostError {
    HostError::Failed(format!("xenstore: cannot {what} {path}: {e}"))
}

/// Reads `path`; `None` if the node does not exist. Values are text to
/// every reader here (invalid UTF-8 is replaced, as nothing rxl reads is
/// binary).
pub(crate) fn read(
    xs: &dyn Xenstore,
    tx: Transaction,
    path: &str,
) -> Result<Option<String>, HostError> {
    match xs.read(tx, path) {
        Ok(value) => Ok(Some(String::from_utf8_lossy(&value).into_owned())),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(failed("read", path, e)),
    }
}

/// Reads `path` as C's `strtoul(value, NULL, 10)` would: the leading
/// decimal digits; `None` if the node is missing or starts with none.
pub(crate) fn read_u32(
    xs: &dyn Xenstore,
    tx: Transaction,
    path: &str,
) -> Result<Option<u32>, HostError> {
    Ok(read(xs, tx, path)?.as_deref().and_then(leading_u32))
}

/// The leading decimal digits of `text` (after blanks), as a number.
pub(crate) fn leading_u32(text: &str) -> Option<u32> {
    leading_u64(text).and_then(|n| u32::try_from(n).ok())
}

/// The leading decimal digits of `text` (after blanks), as a number.
pub(crate) fn leading_u64(text: &str) -> Option<u64> {
    let text = text.trim_start();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    text[..digits].parse().ok()
}

/// Lists `path`'s children; empty if the node does not exist.
pub(crate) fn directory(
    xs: &dyn Xenstore,
    tx: Transaction,
    path: &str,
) -> Result<Vec<String>, HostError> {
    match xs.directory(tx, path) {
        Ok(names) => Ok(names),
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        Err(e) => Err(failed("list", path, e)),
    }
}

/// Whether `path` exists.
pub(crate) fn exists(xs: &dyn Xenstore, tx: Transaction, path: &str) -> Result<bool, HostError> {
    Ok(read(xs, tx, path)?.is_some())
}

/// Writes `value` to `path`, creating it and its parents.
pub(crate) fn write(
    xs: &dyn Xenstore,
    tx: Transaction,
    path: &str,
    value: &str,
) -> Result<(), HostError> {
    xs.write(tx, path, value.as_bytes())
        .map_err(|e| failed("write", path, e))
}

/// Removes `path` and everything below it; a missing node is not an
/// error.
pub(crate) fn rm(xs: &dyn Xenstore, tx: Transaction, path: &str) -> Result<(), HostError> {
    match xs.rm(tx, path) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(failed("remove", path, e)),
    }
}

/// Sets `path`'s permissions.
pub(crate) fn set_perms(
    xs: &dyn Xenstore,
    tx: Transaction,
    path: &str,
    perms: &[XsPerm],
) -> Result<(), HostError> {
    xs.set_perms(tx, path, perms)
        .map_err(|e| failed("set the permissions of", path, e))
}

/// A permission list: `owner` owns the node (and has no access beyond
/// that as "everyone else"), `reader` may read it.
pub(crate) fn owned_by(owner: DomId, reader: DomId) -> Result<[XsPerm; 2], HostError> {
    let id = |domid: DomId| {
        hypercall_abi::xen::DomId::try_from(domid)
            .map_err(|_| HostError::Invalid(format!("domain id {domid} is out of range")))
    };
    Ok([
        XsPerm {
            domid: id(owner)?,
            access: XsPermAccess::None,
        },
        XsPerm {
            domid: id(reader)?,
            access: XsPermAccess::Read,
        },
    ])
}

/// libxl's `libxl__xs_path_cleanup`: removes `path`, then each parent
/// that is left with no value and no children.
pub(crate) fn path_cleanup(
    xs: &dyn Xenstore,
    tx: Transaction,
    path: &str,
) -> Result<(), HostError> {
    rm(xs, tx, path)?;
    let mut parent = path;
    // Ends: each round drops one path component.
    while let Some((up, _)) = parent.rsplit_once('/') {
        if up.is_empty() {
            break;
        }
        parent = up;
        let value = read(xs, tx, parent)?;
        if value.as_deref() != Some("") || !directory(xs, tx, parent)?.is_empty() {
            break;
        }
        rm(xs, tx, parent)?;
    }
    Ok(())
}

/// Runs `body` in a transaction and commits it, starting again (up to
/// [`MAX_TRANSACTION_ATTEMPTS`] times) while the commit conflicts with
/// another writer. An error from `body` aborts the transaction.
pub(crate) fn transaction<R>(
    xs: &dyn Xenstore,
    mut body: impl FnMut(Transaction) -> Result<R, HostError>,
) -> Result<R, HostError> {
    for _ in 0..MAX_TRANSACTION_ATTEMPTS {
        let tx = xs
            .transaction_start()
            .map_err(|e| failed("start", "a transaction", e))?;
        let result = match body(tx) {
            Ok(result) => result,
            Err(e) => {
                if let Err(abort) = xs.transaction_end(tx, false) {
                    log::debug!("aborting a xenstore transaction: {abort}");
                }
                return Err(e);
            }
        };
        match xs.transaction_end(tx, true) {
            Ok(()) => return Ok(result),
            Err(e) if e.is_again() => log::debug!("xenstore transaction conflicted; trying again"),
            Err(e) => return Err(failed("commit", "a transaction", e)),
        }
    }
    Err(HostError::Failed(format!(
        "xenstore: a transaction conflicted with other writers {MAX_TRANSACTION_ATTEMPTS} times in a row; try again"
    )))
}

/// A watch token unique to this process and call.
fn token() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "rxl-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Watches `paths` and calls `check` at once and again whenever one of
/// them changes (or [`WAIT_POLL`] passes), until it returns a value or
/// `deadline` passes (then `None`).
pub(crate) fn wait_for<R>(
    xs: &dyn Xenstore,
    paths: &[&str],
    deadline: Instant,
    mut check: impl FnMut() -> Result<Option<R>, HostError>,
) -> Result<Option<R>, HostError> {
    let token = token();
    let mut watched = Vec::new();
    for path in paths {
        match xs.watch(path, &token) {
            Ok(()) => watched.push(*path),
            // Polling still works without the watch.
            Err(e) => log::debug!("cannot watch {path}: {e}; polling it"),
        }
    }
    let result = (|| loop {
        if let Some(value) = check()? {
            return Ok(Some(value));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        // Any event, ours or not, is a reason to look again.
        xs.read_watch(Some(WAIT_POLL.min(deadline - now)))
            .map_err(|e| failed("wait on", "a watch", e))?;
    })();
    for path in watched {
        if let Err(e) = xs.unwatch(path, &token) {
            log::debug!("cannot unwatch {path}: {e}");
        }
    }
    result
}

#[cfg(test)]
pub(crate) mod testing {
    //! A real xenstore for tests: rxenstored's daemon loop, without Xen,
    //! on a socket in a fresh directory.

    use std::path::PathBuf;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;

    use hypercall_abi::xenstore::XsClient;
    use rxenstored::{Daemon, NoXen};
    use xenstore_engine::Quotas;

    /// A running daemon; dropping it stops the daemon and removes its
    /// directory.
    pub(crate) struct TestStore {
        dir: PathBuf,
        socket: PathBuf,
        stop: Arc<AtomicBool>,
        daemon: Option<JoinHandle<()>>,
    }

    impl TestStore {
        /// Starts a daemon.
        pub(crate) fn start() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "rxl-xs-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let socket = dir.join("socket");
            let stop = Arc::new(AtomicBool::new(false));
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let daemon = {
                let (socket, stop) = (socket.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut d = Daemon::new(&socket, Quotas::default(), NoXen).unwrap();
                    ready_tx.send(()).unwrap();
                    d.run(&stop, 10).unwrap();
                })
            };
            ready_rx.recv().unwrap();
            TestStore {
                dir,
                socket,
                stop,
                daemon: Some(daemon),
            }
        }

        /// A new client connection (as dom0).
        pub(crate) fn client(&self) -> XsClient<std::os::unix::net::UnixStream> {
            let stream = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
            XsClient::new(stream).unwrap()
        }
    }

    impl Drop for TestStore {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(daemon) = self.daemon.take() {
                let _ = daemon.join();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestStore;
    use super::*;

    const NONE: Transaction = Transaction::NONE;

    #[test]
    fn reads_tell_missing_nodes_from_values() {
        let store = TestStore::start();
        let xs = store.client();
        write(&xs, NONE, "/a/b", "42 rest").unwrap();

        assert_eq!(read(&xs, NONE, "/a/b").unwrap().as_deref(), Some("42 rest"));
        assert_eq!(read_u32(&xs, NONE, "/a/b").unwrap(), Some(42));
        assert_eq!(read(&xs, NONE, "/a/missing").unwrap(), None);
        assert_eq!(read_u32(&xs, NONE, "/a/missing").unwrap(), None);
        assert_eq!(directory(&xs, NONE, "/a").unwrap(), ["b"]);
        assert!(directory(&xs, NONE, "/nowhere").unwrap().is_empty());
        rm(&xs, NONE, "/nowhere").unwrap();
    }

    #[test]
    fn numbers_are_read_as_strtoul_does() {
        assert_eq!(leading_u32("1700000000.25"), Some(1_700_000_000));
        assert_eq!(leading_u32(" 7"), Some(7));
        assert_eq!(leading_u32("x7"), None);
        assert_eq!(leading_u32(""), None);
        assert_eq!(leading_u32("99999999999"), None);
    }

    #[test]
    fn path_cleanup_removes_emptied_parents_only() {
        let store = TestStore::start();
        let xs = store.client();
        write(&xs, NONE, "/local/domain/0/backend/rvbd/3/51712/state", "6").unwrap();
        write(&xs, NONE, "/local/domain/0/backend/rvbd/4/51712/state", "4").unwrap();
        write(&xs, NONE, "/local/domain/3/device/vbd/51712/state", "4").unwrap();
        write(&xs, NONE, "/local/domain/3/name", "guest").unwrap();

        transaction(&xs, |tx| {
            path_cleanup(&xs, tx, "/local/domain/0/backend/rvbd/3/51712")?;
            path_cleanup(&xs, tx, "/local/domain/3/device/vbd/51712")
        })
        .unwrap();

        assert!(!exists(&xs, NONE, "/local/domain/0/backend/rvbd/3").unwrap());
        assert!(exists(&xs, NONE, "/local/domain/0/backend/rvbd/4/51712").unwrap());
        assert!(!exists(&xs, NONE, "/local/domain/3/device").unwrap());
        assert_eq!(
            read(&xs, NONE, "/local/domain/3/name").unwrap().as_deref(),
            Some("guest")
        );
    }

    #[test]
    fn a_failing_transaction_body_leaves_nothing() {
        let store = TestStore::start();
        let xs = store.client();

        let result: Result<(), HostError> = transaction(&xs, |tx| {
            write(&xs, tx, "/t/a", "1")?;
            Err(HostError::Invalid("no".into()))
        });

        assert!(matches!(result, Err(HostError::Invalid(_))));
        assert!(!exists(&xs, NONE, "/t/a").unwrap());
    }

    #[test]
    fn wait_for_sees_a_change_made_meanwhile() {
        let store = TestStore::start();
        let xs = store.client();
        let writer = store.client();
        write(&xs, NONE, "/w/state", "4").unwrap();
        let changer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            write(&writer, NONE, "/w/state", "6").unwrap();
        });

        let seen = wait_for(
            &xs,
            &["/w/state"],
            Instant::now() + Duration::from_secs(5),
            || Ok(read_u32(&xs, NONE, "/w/state")?.filter(|&s| s == 6)),
        )
        .unwrap();

        changer.join().unwrap();
        assert_eq!(seen, Some(6));
    }

    #[test]
    fn wait_for_gives_up_at_the_deadline() {
        let store = TestStore::start();
        let xs = store.client();
        let start = Instant::now();

        let seen: Option<()> =
            wait_for(&xs, &["/never"], start + Duration::from_millis(100), || {
                Ok(None)
            })
            .unwrap();

        assert_eq!(seen, None);
        assert!(start.elapsed() >= Duration::from_millis(100));
    }
}
