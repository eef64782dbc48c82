//! Console log files, written as xenconsoled writes them: appended to,
//! optionally with a `[YYYY-MM-DD HH:MM:SS] ` stamp at the start of each
//! line (carriage returns right after a newline dropped, also when they
//! come in the next piece of output, which xenconsoled does not), and optionally
//! with ESC bytes replaced by dots.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::sys;

/// How a log file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStyle {
    /// Stamp each line with the local time (`--timestamp`).
    pub timestamps: bool,
    /// Replace ESC (0x1b) with `.` (`--replace-escape`).
    pub replace_escape: bool,
}

/// An open log file, reopened by path on SIGHUP (after log rotation).
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: File,
    style: LogStyle,
    /// The next byte starts a line (and so needs a stamp).
    at_line_start: bool,
}

/// Opens `path` for appending, creating it `rw-r--r--`.
fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)
}

impl LogFile {
    /// Opens (creating) `path` for appending; with timestamps, notes the
    /// opening as xenconsoled does (`Logfile Opened`).
    pub fn open(path: &Path, style: LogStyle) -> io::Result<Self> {
        let mut log = LogFile {
            path: path.to_owned(),
            file: open_append(path)?,
            style,
            at_line_start: true,
        };
        if style.timestamps {
            log.write(b"Logfile Opened\n")?;
        }
        Ok(log)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again (it may have been rotated away).
    pub fn reopen(&mut self) -> io::Result<()> {
        *self = LogFile::open(&self.path, self.style)?;
        Ok(())
    }

    /// Appends guest (or hypervisor) output.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let text = render(data, self.style, &mut self.at_line_start, &sys::timestamp());
        self.file.write_all(&text)
    }
}

/// `data` as it goes to the file: stamps (`stamp`) before each line
/// start, `\r` after `\n` dropped, ESC replaced, as configured;
/// `at_line_start` carries over between calls.
fn render(data: &[u8], style: LogStyle, at_line_start: &mut bool, stamp: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    let mut rest = data;
    // Ends: each round consumes at least one byte of `rest`.
    while !rest.is_empty() {
        if style.timestamps {
            if *at_line_start {
                // The `\r` of a `\n\r` line end, even in the next chunk.
                let crs = rest.iter().take_while(|&&b| b == b'\r').count();
                rest = &rest[crs..];
                if rest.is_empty() {
                    break;
                }
                out.extend_from_slice(stamp.as_bytes());
            }
            let (line, more, newline) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..=i], &rest[i + 1..], true),
                None => (rest, &[][..], false),
            };
            out.extend_from_slice(line);
            *at_line_start = newline;
            rest = more;
        } else {
            out.extend_from_slice(rest);
            rest = &[];
        }
    }
    if style.replace_escape {
        for b in &mut out {
            if *b == 0x1b {
                *b = b'.';
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: &str = "[T] ";

    fn stamped(chunks: &[&[u8]]) -> Vec<u8> {
        let style = LogStyle {
            timestamps: true,
            replace_escape: false,
        };
        let mut start = true;
        chunks
            .iter()
            .flat_map(|c| render(c, style, &mut start, STAMP))
            .collect()
    }

    #[test]
    fn plain_logs_are_verbatim() {
        let mut start = true;
        let out = render(b"a\r\nb\x1b[0m", LogStyle::default(), &mut start, STAMP);
        assert_eq!(out, b"a\r\nb\x1b[0m");
    }

    #[test]
    fn stamps_start_each_line_across_chunks() {
        assert_eq!(
            stamped(&[b"one\r\ntw", b"o\n", b"\rthree"]),
            b"[T] one\r\n[T] two\n[T] three"
        );
    }

    #[test]
    fn escapes_are_replaced_when_asked() {
        let style = LogStyle {
            timestamps: false,
            replace_escape: true,
        };
        let mut start = true;
        assert_eq!(
            render(b"\x1b[1mbold", style, &mut start, STAMP),
            b".[1mbold"
        );
    }

    #[test]
    fn reopen_follows_the_path_after_rotation() {
        let dir = std::env::temp_dir().join(format!("rxconsoled-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("guest-x.log");
        let mut log = LogFile::open(&path, LogStyle::default()).unwrap();
        log.write(b"before\n").unwrap();
        std::fs::rename(&path, dir.join("guest-x.log.1")).unwrap();

        log.reopen().unwrap();
        log.write(b"after\n").unwrap();

        assert_eq!(std::fs::read(&path).unwrap(), b"after\n");
        assert_eq!(
            std::fs::read(dir.join("guest-x.log.1")).unwrap(),
            b"before\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
