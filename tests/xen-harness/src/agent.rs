//! The host side of the dom0 command channel.
//!
//! dom0 runs `rxen-agent` (tests/xen-host/dom0/rxen-agent) on a
//! virtio-serial port that QEMU connects to a Unix socket the harness
//! listens on. The stream carries nothing but the agent's frames, so no
//! console noise can interleave, and every payload is length-prefixed, so
//! any bytes pass:
//!
//! ```text
//! dom0 -> host, once:  RXEN-READY <kernel release>\n
//! host -> dom0:        RXEN-REQ <id> <timeout s> <script bytes> <stdin bytes>\n<script><stdin>
//! dom0 -> host:        RXEN-RSP <id> <exit status> <stdout bytes> <stderr bytes>\n<stdout><stderr>
//! ```
//!
//! The agent runs one request at a time under `timeout(1)`, which reports
//! a timed-out request with status 124.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Exit status with which the agent reports a step it killed at its timeout.
pub const TIMEOUT_STATUS: i32 = 124;

/// Extra time the host allows beyond a step's own timeout before it gives
/// up on the channel (the agent kills the step 2 s after the timeout).
const HOST_SLACK: Duration = Duration::from_secs(30);

/// Upper bound on a response header line.
const MAX_LINE: usize = 4096;

/// What a dom0 step printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit status of the step's script.
    pub status: i32,
    /// Its standard output (lossily decoded as UTF-8).
    pub stdout: String,
    /// Its standard error (lossily decoded as UTF-8).
    pub stderr: String,
    /// Wall time from sending the request to receiving the response.
    pub elapsed: Duration,
}

impl Output {
    /// Whether the script exited with status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// A connected agent.
#[derive(Debug)]
pub struct Agent {
    stream: UnixStream,
    buf: Vec<u8>,
    next_id: u64,
    broken: Option<String>,
}

impl Agent {
    /// Waits until the agent on `stream` reports ready; returns the agent
    /// and the dom0 kernel release it reported.
    pub fn wait_ready(stream: UnixStream, deadline: Instant) -> Result<(Agent, String)> {
        Agent::wait_ready_or(stream, deadline, Duration::MAX, || Ok(()))
    }

    /// [`Agent::wait_ready`], calling `check` every `every` while it
    /// waits: an error from `check` (the boot went wrong) ends the wait.
    pub fn wait_ready_or(
        stream: UnixStream,
        deadline: Instant,
        every: Duration,
        mut check: impl FnMut() -> Result<()>,
    ) -> Result<(Agent, String)> {
        let mut agent = Agent {
            stream,
            buf: Vec::new(),
            next_id: 1,
            broken: None,
        };
        loop {
            let now = Instant::now();
            let slice = now.checked_add(every).map_or(deadline, |t| t.min(deadline));
            let line = match agent.read_line(slice) {
                Ok(line) => line,
                // The slice ended, not the wait: what was read is kept.
                Err(Error::Protocol(_)) if Instant::now() >= slice && slice < deadline => {
                    check()?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(release) = line.strip_prefix("RXEN-READY ") {
                return Ok((agent, release.trim().to_owned()));
            }
            log::warn!("agent: ignoring {line:?} before ready");
        }
    }

    /// Runs `script` under bash in dom0 with `stdin` as its standard input,
    /// killed after `timeout`.
    pub fn run(&mut self, script: &str, stdin: &[u8], timeout: Duration) -> Result<Output> {
        if let Some(why) = &self.broken {
            return Err(Error::Broken(why.clone()));
        }
        let result = self.exchange(script, stdin, timeout);
        if let Err(e) = &result {
            self.broken = Some(e.to_string());
        }
        result
    }

    /// Sends a request without waiting for its response: for steps that end
    /// the host (power-off). The channel is unusable afterwards.
    pub fn send_only(&mut self, script: &str) -> Result<()> {
        let id = self.next_id;
        self.write_request(id, script, &[], Duration::from_secs(60))?;
        self.broken = Some("the host was told to power off".to_owned());
        Ok(())
    }

    fn exchange(&mut self, script: &str, stdin: &[u8], timeout: Duration) -> Result<Output> {
        let start = Instant::now();
        let id = self.next_id;
        self.next_id += 1;
        self.write_request(id, script, stdin, timeout)?;
        let deadline = start + timeout + HOST_SLACK;
        let header = loop {
            let line = self.read_line(deadline)?;
            if line.starts_with("RXEN-RSP ") {
                break line;
            }
            // The agent restarts (and says ready again) if it ever dies.
            log::warn!("agent: ignoring unexpected line {line:?}");
        };
        let fields: Vec<&str> = header.split_whitespace().collect();
        let parse = |i: usize| -> Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| Error::Protocol(format!("malformed response header {header:?}")))
        };
        if fields.len() != 5 || parse(1)? != id {
            return Err(Error::Protocol(format!(
                "response {header:?} does not answer request {id}"
            )));
        }
        let status = fields[2]
            .parse::<i32>()
            .map_err(|_| Error::Protocol(format!("malformed exit status in {header:?}")))?;
        let out_len = usize::try_from(parse(3)?)
            .map_err(|_| Error::Protocol("stdout too large".to_owned()))?;
        let err_len = usize::try_from(parse(4)?)
            .map_err(|_| Error::Protocol("stderr too large".to_owned()))?;
        let stdout = self.read_exact(out_len, deadline)?;
        let stderr = self.read_exact(err_len, deadline)?;
        let out = Output {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            elapsed: start.elapsed(),
        };
        if out.status == TIMEOUT_STATUS && out.elapsed >= timeout {
            return Err(Error::StepTimeout {
                script: script.to_owned(),
                timeout,
            });
        }
        Ok(out)
    }

    fn write_request(
        &mut self,
        id: u64,
        script: &str,
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<()> {
        let secs = timeout.as_secs().max(1);
        let mut msg =
            format!("RXEN-REQ {id} {secs} {} {}\n", script.len(), stdin.len()).into_bytes();
        msg.extend_from_slice(script.as_bytes());
        msg.extend_from_slice(stdin);
        self.stream
            .set_write_timeout(Some(timeout + HOST_SLACK))
            .map_err(Error::io("setting the agent socket's write timeout"))?;
        self.stream
            .write_all(&msg)
            .map_err(|e| Error::Protocol(format!("cannot send request {id}: {e}")))
    }

    /// Fills `self.buf` from the socket until `deadline`; returns false at EOF.
    fn fill(&mut self, deadline: Instant) -> Result<bool> {
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Protocol(
                "timed out waiting for dom0's agent".to_owned(),
            ));
        }
        self.stream
            .set_read_timeout(Some(deadline - now))
            .map_err(Error::io("setting the agent socket's read timeout"))?;
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(Error::Protocol(
                        "timed out waiting for dom0's agent".to_owned(),
                    ))
                }
                Err(e) => return Err(Error::Protocol(format!("read failed: {e}"))),
            }
        }
    }

    fn read_line(&mut self, deadline: Instant) -> Result<String> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Ok(String::from_utf8_lossy(&line[..pos]).into_owned());
            }
            if self.buf.len() > MAX_LINE {
                return Err(Error::Protocol(
                    "over-long line from dom0's agent".to_owned(),
                ));
            }
            if !self.fill(deadline)? {
                return Err(Error::Protocol(
                    "dom0's agent closed the channel".to_owned(),
                ));
            }
        }
    }

    fn read_exact(&mut self, len: usize, deadline: Instant) -> Result<Vec<u8>> {
        while self.buf.len() < len {
            if !self.fill(deadline)? {
                return Err(Error::Protocol(
                    "dom0's agent closed the channel mid-response".to_owned(),
                ));
            }
        }
        Ok(self.buf.drain(..len).collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::thread;

    /// A stand-in for dom0's agent: answers each request with the script
    /// as stdout, the stdin as stderr and status 3.
    fn fake_agent(stream: UnixStream) {
        let mut w = stream.try_clone().unwrap();
        let mut r = BufReader::new(stream);
        w.write_all(b"noise\nRXEN-READY 6.1.0-test\n").unwrap();
        let mut line = String::new();
        while r.read_line(&mut line).unwrap() > 0 {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (id, slen, ilen): (u64, usize, usize) = (
                f[1].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
            );
            let mut script = vec![0; slen];
            r.read_exact(&mut script).unwrap();
            let mut stdin = vec![0; ilen];
            r.read_exact(&mut stdin).unwrap();
            writeln!(w, "RXEN-RSP {id} 3 {slen} {ilen}").unwrap();
            w.write_all(&script).unwrap();
            w.write_all(&stdin).unwrap();
            line.clear();
        }
    }

    #[test]
    fn round_trips_binary_payloads_and_status() {
        let (host, dom0) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || fake_agent(dom0));
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut agent, release) = Agent::wait_ready(host, deadline).unwrap();
        assert_eq!(release, "6.1.0-test");
        for _ in 0..3 {
            let out = agent
                .run(
                    "echo 'RXEN-RSP 9 0 0 0'\n",
                    b"\0\n\xffbin",
                    Duration::from_secs(5),
                )
                .unwrap();
            assert_eq!(out.status, 3);
            assert_eq!(out.stdout, "echo 'RXEN-RSP 9 0 0 0'\n");
            assert_eq!(out.stderr.as_bytes()[..2], *b"\0\n");
        }
        drop(agent);
        t.join().unwrap();
    }

    #[test]
    fn a_wait_for_ready_checks_between_slices_and_keeps_what_it_read() {
        let (host, dom0) = UnixStream::pair().unwrap();
        let mut w = dom0.try_clone().unwrap();
        // Half a line now, the rest after two slices.
        let t = thread::spawn(move || {
            w.write_all(b"RXEN-REA").unwrap();
            thread::sleep(Duration::from_millis(250));
            w.write_all(b"DY 6.1.0-late\n").unwrap();
            w
        });
        let mut checks = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        let (_, release) = Agent::wait_ready_or(host, deadline, Duration::from_millis(50), || {
            checks += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(release, "6.1.0-late");
        assert!(checks >= 2, "{checks} checks");
        drop(t.join().unwrap());
        drop(dom0);

        // A check that fails ends the wait with its error, long before
        // the deadline.
        let (host, _dom0) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let got = Agent::wait_ready_or(host, start + Duration::from_secs(10), Duration::from_millis(20), || {
            Err(Error::BootStalled { quiet: Duration::from_secs(90), serial_log: "log".into() })
        });
        assert!(matches!(got, Err(Error::BootStalled { .. })), "{got:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn closed_channel_breaks_the_agent() {
        let (host, dom0) = UnixStream::pair().unwrap();
        let mut w = dom0.try_clone().unwrap();
        w.write_all(b"RXEN-READY x\n").unwrap();
        let (mut agent, _) =
            Agent::wait_ready(host, Instant::now() + Duration::from_secs(5)).unwrap();
        drop(w);
        drop(dom0);
        assert!(matches!(
            agent.run("true", &[], Duration::from_secs(1)),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            agent.run("true", &[], Duration::from_secs(1)),
            Err(Error::Broken(_))
        ));
    }
}
