//! The daemon's xenstore: reading and checking a domain's console nodes,
//! and a thread that turns watch events into something `poll` can wait
//! on.
//!
//! Everything read is checked: the console directory
//! (`/local/domain/D/console`) is the guest's own, writable by it except
//! for `ring-ref` and `port`, so its values are the guest's to choose.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hypercall_abi::platform::{Transaction, WatchEvent, Xenstore, XsError};
use hypercall_abi::xen::{DomId, EvtchnPort};

/// The console `type` this daemon serves (others are for QEMU).
pub const CONSOLE_TYPE: &str = "xenconsoled";

/// The highest event channel port of any ABI (FIFO: 2^17 - 1).
const MAX_PORT: EvtchnPort = (1 << 17) - 1;

/// Longest domain name used in a log file name (a file name's limit
/// less `guest-` and `.log`).
const MAX_NAME: usize = 245;

/// A console node holds a value the daemon refuses.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The value is not what the node must hold.
    #[error("{path} holds {value:?}, which is not {expected}")]
    Invalid {
        /// The node.
        path: String,
        /// Its value, as text (lossily).
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// Reading failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The node.
        path: String,
        /// Why.
        #[source]
        source: XsError,
    },
}

/// `/local/domain/D`.
pub fn domain_path(domid: DomId) -> String {
    format!("/local/domain/{domid}")
}

/// `/local/domain/D/console`: the primary PV console's directory.
pub fn console_path(domid: DomId) -> String {
    format!("{}/console", domain_path(domid))
}

/// Reads `path`; `None` if the node does not exist.
pub fn read(xs: &dyn Xenstore, path: &str) -> Result<Option<Vec<u8>>, NodeError> {
    match xs.read(Transaction::NONE, path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(source) => Err(NodeError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `value` to `path` only if the directory `dir` still exists, in
/// one transaction (retried on conflicts): a write outside one would
/// create the directory again if the toolstack had just removed it (a
/// domain destroyed while its console is set up), leaving it behind.
/// Returns whether it wrote.
pub fn write_in_existing(xs: &dyn Xenstore, dir: &str, path: &str, value: &[u8]) -> Result<bool, XsError> {
    loop {
        let tx = xs.transaction_start()?;
        let written = match xs.read(tx, dir) {
            Ok(_) => xs.write(tx, path, value).map(|()| true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        };
        match written {
            Ok(written) => match xs.transaction_end(tx, written) {
                Ok(()) => return Ok(written),
                Err(e) if e.is_again() => continue,
                Err(e) => return Err(e),
            },
            Err(e) => {
                let _ = xs.transaction_end(tx, false);
                return Err(e);
            }
        }
    }
}

/// What the toolstack wrote for a console to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleNodes {
    /// `ring-ref`: the frame of the console page (PV: an mfn).
    pub ring_ref: u64,
    /// `port`: the guest's end of the event channel.
    pub port: EvtchnPort,
    /// Whether `type` is missing or [`CONSOLE_TYPE`] (else another
    /// backend serves it).
    pub ours: bool,
}

/// Reads a console's `ring-ref`, `port` and `type`; `None` while
/// `ring-ref` or `port` is missing (the toolstack has not finished).
pub fn console_nodes(xs: &dyn Xenstore, dir: &str) -> Result<Option<ConsoleNodes>, NodeError> {
    let ring_path = format!("{dir}/ring-ref");
    let port_path = format!("{dir}/port");
    let (Some(ring_ref), Some(port)) = (read(xs, &ring_path)?, read(xs, &port_path)?) else {
        return Ok(None);
    };
    let invalid = |path: String, value: &[u8], expected| NodeError::Invalid {
        path,
        value: String::from_utf8_lossy(value).into_owned(),
        expected,
    };
    let ring =
        parse_decimal(&ring_ref).ok_or_else(|| invalid(ring_path, &ring_ref, "a frame number"))?;
    let port = parse_decimal(&port)
        .and_then(|p| EvtchnPort::try_from(p).ok())
        .filter(|p| (1..=MAX_PORT).contains(p))
        .ok_or_else(|| invalid(port_path, &port, "an event channel port"))?;
    let ours = match read(xs, &format!("{dir}/type"))? {
        None => true,
        Some(t) => t == CONSOLE_TYPE.as_bytes(),
    };
    Ok(Some(ConsoleNodes {
        ring_ref: ring,
        port,
        ours,
    }))
}

/// A console's `limit` (bytes of output to buffer), read as C's
/// `strtoul(value, NULL, 0)`; `None` if missing or not a number.
pub fn limit(xs: &dyn Xenstore, dir: &str) -> Result<Option<usize>, NodeError> {
    Ok(read(xs, &format!("{dir}/limit"))?
        .and_then(|v| parse_c_number(&v))
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
}

/// The domain's `name`, if it can name a log file: not empty, not `.` or
/// `..`, no `/` or NUL, at most 245 bytes.
pub fn name(xs: &dyn Xenstore, domid: DomId) -> Result<Option<String>, NodeError> {
    let path = format!("{}/name", domain_path(domid));
    let Some(value) = read(xs, &path)? else {
        return Ok(None);
    };
    let name = String::from_utf8(value.clone()).ok().filter(|n| {
        !n.is_empty() && n.len() <= MAX_NAME && n != "." && n != ".." && !n.contains(['/', '\0'])
    });
    match name {
        Some(n) => Ok(Some(n)),
        None => Err(NodeError::Invalid {
            path,
            value: String::from_utf8_lossy(&value).into_owned(),
            expected: "a domain name usable in a file name",
        }),
    }
}

/// `sscanf(value, "%u")` without its wrap-around of negative numbers:
/// optional blanks, then decimal digits (what follows them is ignored).
fn parse_decimal(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim_start();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    text[..digits].parse().ok()
}

/// `strtoul(value, NULL, 0)`: optional blanks and `+`, then `0x`/`0X` and
/// hex digits, `0` and octal digits, or decimal digits; `None` if no
/// digit or the number does not fit.
fn parse_c_number(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim_start();
    let text = text.strip_prefix('+').unwrap_or(text);
    let (radix, body) =
        if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            (16, hex)
        } else if text.starts_with('0') {
            (8, text)
        } else {
            (10, text)
        };
    let end = body
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(body.len());
    u64::from_str_radix(&body[..end], radix).ok()
}

/// How often the watch thread looks at its stop flag.
const WATCH_TICK: Duration = Duration::from_millis(100);

/// A thread reading watch events off the xenstore connection, handing
/// them over through a channel and waking the daemon's `poll` through
/// [`fd`](Watcher::fd). The xenstore client has no fd of its own to poll.
#[derive(Debug)]
pub struct Watcher {
    events: Receiver<Result<WatchEvent, XsError>>,
    wake: UnixStream,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts the thread on `xs`.
    pub fn start(xs: Arc<dyn Xenstore>) -> io::Result<Watcher> {
        let (wake, wake_thread) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_thread.set_nonblocking(true)?;
        let (tx, events) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("xenstore-watch".into())
            .spawn(move || {
                while !thread_stop.load(Ordering::Relaxed) {
                    let event = match xs.read_watch(Some(WATCH_TICK)) {
                        Ok(None) => continue,
                        Ok(Some(e)) => Ok(e),
                        Err(e) => Err(e),
                    };
                    let failed = event.is_err();
                    if tx.send(event).is_err() {
                        return;
                    }
                    // A full socket already holds a wake-up.
                    let _ = (&wake_thread).write(&[1]);
                    if failed {
                        return;
                    }
                }
            })?;
        Ok(Watcher {
            events,
            wake,
            stop,
            thread: Some(thread),
        })
    }

    /// Readable when events are waiting.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The events waiting (at most `max`), oldest first.
    pub fn take(&self, max: usize) -> Vec<Result<WatchEvent, XsError>> {
        let mut buf = [0u8; 256];
        // Ends: the socket is non-blocking.
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        let mut out = Vec::new();
        while out.len() < max {
            match self.events.try_recv() {
                Ok(e) => out.push(e),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    out.push(Err(XsError::Closed));
                    break;
                }
            }
        }
        if out.len() == max {
            // More may wait: stay readable.
            let _ = (&self.wake).write(&[1]);
        }
        out
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the xenstore watch thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_as_the_c_daemon_reads_them() {
        assert_eq!(parse_decimal(b"1234"), Some(1234));
        assert_eq!(parse_decimal(b" 77\n"), Some(77));
        assert_eq!(parse_decimal(b"-1"), None);
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"99999999999999999999999"), None);
        assert_eq!(parse_c_number(b"1048576"), Some(1_048_576));
        assert_eq!(parse_c_number(b"0x100000"), Some(0x10_0000));
        assert_eq!(parse_c_number(b"010"), Some(8));
        assert_eq!(parse_c_number(b"0"), Some(0));
        assert_eq!(parse_c_number(b"junk"), None);
    }
}
