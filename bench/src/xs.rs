//! A xenstore daemon workload over the Unix socket: reads, writes,
//! directory listings and transactions per second, and the latency of a
//! watch event, measured by one blocking client (no reader thread, one
//! request in flight) so that the same cost is added for every daemon.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hypercall_abi::xen::xs_wire::{XsType, XsdSockmsg, XSD_SOCKMSG_SIZE};
use zerocopy::{FromBytes, IntoBytes};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The daemon's Unix socket.
    pub socket: PathBuf,
    /// How long each operation is repeated.
    pub per_op: Duration,
    /// Nodes created under `/rxen-bench/bg` before measuring.
    pub background: usize,
    /// Children of the listed directory.
    pub children: usize,
}

/// Why the workload stopped.
#[derive(Debug, thiserror::Error)]
pub enum XsBenchError {
    /// The socket failed.
    #[error("xenstore socket: {0}")]
    Io(#[from] io::Error),
    /// The daemon answered a request with an error.
    #[error("{op} {path}: the daemon answered {error}")]
    Daemon {
        /// The request type.
        op: &'static str,
        /// Its path.
        path: String,
        /// The error name on the wire.
        error: String,
    },
    /// The daemon sent something that is not a reply to the request.
    #[error("unexpected reply type {0} to {1}")]
    Protocol(u32, &'static str),
}

/// One measured figure.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    /// Operations per second.
    Rate {
        /// The operation.
        op: &'static str,
        /// Completed operations per second.
        per_sec: f64,
    },
    /// Watch event latency, from sending a write on one connection to the
    /// event arriving on another.
    WatchLatency {
        /// Median, in microseconds.
        p50_us: f64,
        /// 99th percentile, in microseconds.
        p99_us: f64,
        /// Samples taken.
        samples: usize,
    },
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Measure::Rate { op, per_sec } => write!(f, "op={op} per_sec={per_sec:.1}"),
            Measure::WatchLatency {
                p50_us,
                p99_us,
                samples,
            } => write!(
                f,
                "op=watch-latency p50_us={p50_us:.1} p99_us={p99_us:.1} samples={samples}"
            ),
        }
    }
}

/// One blocking connection.
struct Conn {
    sock: UnixStream,
    req_id: u32,
    /// Watch events that arrived while waiting for a reply.
    events: usize,
    /// Bytes read but not yet taken as messages.
    inbuf: Vec<u8>,
}

impl Conn {
    fn open(path: &PathBuf) -> Result<Conn, XsBenchError> {
        Ok(Conn {
            sock: UnixStream::connect(path)?,
            req_id: 0,
            events: 0,
            inbuf: Vec::with_capacity(8192),
        })
    }

    fn send(&mut self, ty: XsType, tx: u32, payload: &[u8]) -> Result<(), XsBenchError> {
        self.req_id = self.req_id.wrapping_add(1);
        let header = XsdSockmsg {
            type_: ty as u32,
            req_id: self.req_id,
            tx_id: tx,
            len: payload.len() as u32,
        };
        let mut msg = Vec::with_capacity(XSD_SOCKMSG_SIZE + payload.len());
        msg.extend_from_slice(header.as_bytes());
        msg.extend_from_slice(payload);
        self.sock.write_all(&msg)?;
        Ok(())
    }

    /// The next message: (type, payload). Reads as much as the socket
    /// holds at once (usually the whole reply in one system call).
    fn recv(&mut self, body: &mut Vec<u8>) -> Result<u32, XsBenchError> {
        loop {
            if self.inbuf.len() >= XSD_SOCKMSG_SIZE {
                let header = XsdSockmsg::read_from_bytes(&self.inbuf[..XSD_SOCKMSG_SIZE])
                    .map_err(|_| XsBenchError::Protocol(u32::MAX, "header"))?;
                let end = XSD_SOCKMSG_SIZE + header.len as usize;
                if self.inbuf.len() >= end {
                    body.clear();
                    body.extend_from_slice(&self.inbuf[XSD_SOCKMSG_SIZE..end]);
                    self.inbuf.drain(..end);
                    return Ok(header.type_);
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.sock.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            self.inbuf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a request and waits for its reply, counting watch events
    /// that come first.
    fn call(
        &mut self,
        ty: XsType,
        tx: u32,
        path: &str,
        payload: &[u8],
        body: &mut Vec<u8>,
    ) -> Result<(), XsBenchError> {
        self.send(ty, tx, payload)?;
        loop {
            let got = self.recv(body)?;
            if got == XsType::WatchEvent as u32 {
                self.events += 1;
                continue;
            }
            if got == XsType::Error as u32 {
                return Err(XsBenchError::Daemon {
                    op: ty.name(),
                    path: path.to_owned(),
                    error: String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body))
                        .into_owned(),
                });
            }
            if got != ty as u32 {
                return Err(XsBenchError::Protocol(got, ty.name()));
            }
            return Ok(());
        }
    }

    fn write(&mut self, tx: u32, path: &str, value: &[u8], body: &mut Vec<u8>) -> Result<(), XsBenchError> {
        let mut p = Vec::with_capacity(path.len() + 1 + value.len());
        p.extend_from_slice(path.as_bytes());
        p.push(0);
        p.extend_from_slice(value);
        self.call(XsType::Write, tx, path, &p, body)
    }

    fn path_op(&mut self, ty: XsType, tx: u32, path: &str, body: &mut Vec<u8>) -> Result<(), XsBenchError> {
        let mut p = Vec::with_capacity(path.len() + 1);
        p.extend_from_slice(path.as_bytes());
        p.push(0);
        self.call(ty, tx, path, &p, body)
    }
}

const ROOT: &str = "/rxen-bench";

/// Repeats `op` for `per`, returns completed operations per second.
fn rate(
    per: Duration,
    mut op: impl FnMut(u64) -> Result<(), XsBenchError>,
) -> Result<f64, XsBenchError> {
    let start = Instant::now();
    let mut n = 0u64;
    // Check the clock every few operations only.
    while start.elapsed() < per {
        for _ in 0..8 {
            op(n)?;
            n += 1;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Runs the whole workload; the store is left as it was found except for
/// `/rxen-bench`, which is removed at the end.
pub fn run_workload(w: &Workload) -> Result<Vec<Measure>, XsBenchError> {
    let mut c = Conn::open(&w.socket)?;
    let mut body = Vec::with_capacity(4096);
    let _ = c.path_op(XsType::Rm, 0, ROOT, &mut body);

    // A store of realistic size: `background` nodes in a two-level tree,
    // the way many domains' device trees look.
    for i in 0..w.background {
        let path = format!("{ROOT}/bg/{}/{}", i / 32, i % 32);
        c.write(0, &path, b"background value", &mut body)?;
    }
    for i in 0..w.children {
        c.write(0, &format!("{ROOT}/dir/child-{i}"), b"0123456789abcdef", &mut body)?;
    }
    c.write(0, &format!("{ROOT}/tx/counter"), b"0", &mut body)?;

    let mut out = Vec::new();
    let read_path = format!("{ROOT}/dir/child-0");
    let per_sec = rate(w.per_op, |_| c.path_op(XsType::Read, 0, &read_path, &mut body))?;
    out.push(Measure::Rate { op: "read", per_sec });

    let write_paths: Vec<String> = (0..64).map(|i| format!("{ROOT}/w/{i}")).collect();
    let per_sec = rate(w.per_op, |n| {
        let value = n.to_string();
        c.write(0, &write_paths[(n % 64) as usize], value.as_bytes(), &mut body)
    })?;
    out.push(Measure::Rate { op: "write", per_sec });

    let dir = format!("{ROOT}/dir");
    let per_sec = rate(w.per_op, |_| c.path_op(XsType::Directory, 0, &dir, &mut body))?;
    out.push(Measure::Rate {
        op: "directory",
        per_sec,
    });

    // A transaction: start, read a counter, write it back plus one, commit.
    let counter = format!("{ROOT}/tx/counter");
    let mut value = Vec::new();
    let per_sec = rate(w.per_op, |_| {
        c.call(XsType::TransactionStart, 0, "", b"\0", &mut body)?;
        let tx: u32 = std::str::from_utf8(body.strip_suffix(b"\0").unwrap_or(&body))
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(XsBenchError::Protocol(XsType::TransactionStart as u32, "transaction id"))?;
        c.path_op(XsType::Read, tx, &counter, &mut body)?;
        let n: u64 = std::str::from_utf8(&body)
            .ok()
            .and_then(|s| s.trim_end_matches('\0').parse().ok())
            .unwrap_or(0);
        value.clear();
        value.extend_from_slice((n + 1).to_string().as_bytes());
        let v = value.clone();
        c.write(tx, &counter, &v, &mut body)?;
        c.call(XsType::TransactionEnd, tx, "", b"T\0", &mut body)
    })?;
    out.push(Measure::Rate {
        op: "transaction",
        per_sec,
    });

    out.push(watch_latency(w, &mut c, &mut body)?);
    let _ = c.path_op(XsType::Rm, 0, ROOT, &mut body);
    Ok(out)
}

/// Latency from a write on one connection to the watch event on another.
fn watch_latency(w: &Workload, c: &mut Conn, body: &mut Vec<u8>) -> Result<Measure, XsBenchError> {
    let mut watcher = Conn::open(&w.socket)?;
    let watched = format!("{ROOT}/watched");
    c.write(0, &watched, b"", body)?;
    let mut p = Vec::new();
    p.extend_from_slice(watched.as_bytes());
    p.push(0);
    p.extend_from_slice(b"bench\0");
    watcher.call(XsType::Watch, 0, &watched, &p, body)?;
    // The registration fires once; it may come before or after the reply.
    while watcher.events == 0 {
        if watcher.recv(body)? == XsType::WatchEvent as u32 {
            watcher.events += 1;
        }
    }
    let leaf = format!("{watched}/x");
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < w.per_op {
        let t = Instant::now();
        c.send(XsType::Write, 0, &[leaf.as_bytes(), b"\0v"].concat())?;
        // The event (the writer's reply is read after).
        loop {
            if watcher.recv(body)? == XsType::WatchEvent as u32 {
                break;
            }
        }
        samples.push(t.elapsed());
        let got = c.recv(body)?;
        if got != XsType::Write as u32 {
            return Err(XsBenchError::Protocol(got, "WRITE"));
        }
    }
    samples.sort();
    let us = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Ok(Measure::WatchLatency {
        p50_us: us(0.5),
        p99_us: us(0.99),
        samples: samples.len(),
    })
}
