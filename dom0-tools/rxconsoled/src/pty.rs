//! The pty a console is reached through: the daemon holds the master
//! (non-blocking) and keeps the slave open itself, in raw mode, so that
//! the master neither fails nor loses output while no client is
//! attached; clients (`xl console`, `rxl console`) open the slave by the
//! path written to the console's `tty` node.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::sys;

/// A pty pair.
#[derive(Debug)]
pub struct Pty {
    master: File,
    /// Held open, never read: see the module documentation.
    _slave: File,
    path: PathBuf,
}

impl Pty {
    /// Opens a new pty pair: raw, master non-blocking.
    pub fn open() -> io::Result<Pty> {
        let (master, path) = sys::open_pty_master()?;
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(&path)?;
        sys::make_raw(slave.as_fd())?;
        sys::set_nonblocking(master.as_fd())?;
        Ok(Pty {
            master,
            _slave: slave,
            path,
        })
    }

    /// The slave's path, e.g. `/dev/pts/3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The master, to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.master.as_fd()
    }

    /// Reads client input; `Ok(0)` if none is waiting.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match (&self.master).read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            other => other,
        }
    }

    /// Writes output for clients; `Ok(0)` if the pty is full.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match (&self.master).write(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_cross_the_pty_both_ways_unchanged() {
        let pty = Pty::open().unwrap();
        let mut client = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(pty.path())
            .unwrap();

        // Raw mode: no echo, no CR/LF translation, control bytes pass.
        assert_eq!(pty.write(b"out\r\n\x03").unwrap(), 6);
        let mut got = [0u8; 6];
        client.read_exact(&mut got).unwrap();
        client.write_all(b"in\r\x1d").unwrap();
        let mut back = Vec::new();
        for _ in 0..100 {
            let mut buf = [0u8; 16];
            let n = pty.read(&mut buf).unwrap();
            back.extend_from_slice(&buf[..n]);
            if back.len() >= 4 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }

        assert_eq!(&got, b"out\r\n\x03");
        assert_eq!(back, b"in\r\x1d");
        assert!(pty.path().starts_with("/dev/pts"));
    }

    #[test]
    fn an_idle_master_reads_nothing_without_blocking() {
        let pty = Pty::open().unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(pty.read(&mut buf).unwrap(), 0);
    }
}
