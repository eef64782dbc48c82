//! A writer for `newc` cpio archives, the format Linux unpacks as an
//! initramfs. Linux accepts several archives one after another, so the
//! harness appends a small archive (project binaries, scenario files) to a
//! cached initramfs instead of rebuilding it.

use std::collections::BTreeSet;
use std::path::Path;

use crate::error::{Error, Result};

/// Regular file, directory and symbolic link type bits (`S_IFREG`, ...).
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// An archive being built in memory.
#[derive(Debug, Default)]
pub struct Archive {
    buf: Vec<u8>,
    dirs: BTreeSet<String>,
    next_ino: u32,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Archive {
        Archive {
            buf: Vec::new(),
            dirs: BTreeSet::new(),
            next_ino: 1,
        }
    }

    /// Adds a regular file at `path` (absolute or relative to the root) with
    /// permission bits `mode`; its parent directories are added as needed.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Archive {
        let path = normalize(path);
        self.parents(&path);
        self.entry(&path, S_IFREG | (mode & 0o7777), data);
        self
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str) -> &mut Archive {
        let path = normalize(path);
        self.parents(&path);
        if self.dirs.insert(path.clone()) {
            self.entry(&path, S_IFDIR | 0o755, &[]);
        }
        self
    }

    /// Adds a symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Archive {
        let path = normalize(path);
        self.parents(&path);
        self.entry(&path, S_IFLNK | 0o777, target.as_bytes());
        self
    }

    /// Adds the host file `source` at `path` with permission bits `mode`.
    pub fn host_file(&mut self, path: &str, source: &Path, mode: u32) -> Result<&mut Archive> {
        let data = std::fs::read(source).map_err(|e| Error::ReadFile {
            path: source.to_owned(),
            source: e,
        })?;
        Ok(self.file(path, mode, &data))
    }

    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }

    fn parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let comps: Vec<&str> = path.split('/').collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(c);
            if self.dirs.insert(prefix.clone()) {
                let p = prefix.clone();
                self.entry(&p, S_IFDIR | 0o755, &[]);
            }
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let ino = if mode == 0 { 0 } else { self.next_ino };
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
        let namesize = name.len() + 1;
        // The 13 fields of a newc header, each eight hex digits.
        let fields: [u32; 13] = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0, // devmajor
            0, // devminor
            0, // rdevmajor
            0, // rdevminor
            u32::try_from(namesize).unwrap_or(u32::MAX),
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }
}

fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    #[test]
    fn entries_are_four_byte_aligned_and_parents_come_first() {
        let mut a = Archive::new();
        a.file("/usr/local/bin/tool", 0o755, b"abc");
        let bytes = a.finish();
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        let usr = text.find("usr\0").unwrap();
        let local = text.find("usr/local\0").unwrap();
        let tool = text.find("usr/local/bin/tool\0").unwrap();
        assert!(usr < local && local < tool);
        assert!(text.contains("TRAILER!!!"));
    }

    #[test]
    fn gnu_cpio_lists_and_extracts_what_was_written() {
        if Command::new("cpio").arg("--version").output().is_err() {
            return; // cpio is not installed; the alignment test above still runs
        }
        let mut a = Archive::new();
        a.file("etc/greeting", 0o644, b"hello\n")
            .symlink("etc/link", "greeting");
        let bytes = a.finish();
        let mut child = Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            listing.lines().collect::<Vec<_>>(),
            ["etc", "etc/greeting", "etc/link"]
        );
    }
}
