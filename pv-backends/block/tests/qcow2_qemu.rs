//! qcow2 interoperability with QEMU's own tools (`qemu-img`, `qemu-io`
//! from Debian's qemu-utils): images QEMU made read as QEMU reads them,
//! images rblkback wrote pass `qemu-img check` and `qemu-img compare`, and
//! per-guest overlays over a shared base leave the base untouched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rblkback::qcow2::{self, BackingFile, CreateOptions};
use rblkback::{create_overlay, open_image, Disk, ImageFormat, Qcow2Disk, Qcow2Options, RawDiskOptions};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        // tmpfs where there is one: the images are small but many.
        let root = Path::new("/dev/shm");
        let root = if root.is_dir() { root.to_owned() } else { std::env::temp_dir() };
        let dir = root.join(format!("rblkback-qemu-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {program}: {e}; install Debian's qemu-utils (apt-get install qemu-utils)")
    });
    out
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `qemu-img check`: no corruption and no leaked clusters.
fn assert_clean(image: &Path) {
    let out = run("qemu-img", &["check", "-f", "qcow2", s(image)]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "qemu-img check {} failed ({:?}):\n{text}", image.display(), out.status.code());
    assert!(text.contains("No errors were found"), "qemu-img check {}:\n{text}", image.display());
}

/// `qemu-img compare`: the image's guest contents equal `expected`.
fn assert_same_as(image: &Path, expected: &[u8]) {
    let raw = image.with_extension("expected.raw");
    std::fs::write(&raw, expected).unwrap();
    ok("qemu-img", &["compare", "-f", "qcow2", "-F", "raw", s(image), s(&raw)]);
    std::fs::remove_file(&raw).unwrap();
}

fn read_all(disk: &dyn Disk) -> Vec<u8> {
    let mut buf = vec![0u8; disk.size() as usize];
    disk.read_at(0, &mut buf).unwrap();
    buf
}

/// Disk contents with data, zero runs and repeated blocks.
fn sample(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    let mut at = 0;
    while at < len {
        let n = rng.gen_range(1..=24_000).min(len - at);
        match rng.gen_range(0..3) {
            0 => {}
            1 => data[at..at + n].fill(rng.gen()),
            _ => rng.fill(&mut data[at..at + n]),
        }
        at += n;
    }
    data
}

fn seeded() -> StdRng {
    let seed = std::env::var("RBLKBACK_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("seed {seed} (set RBLKBACK_TEST_SEED to replay)");
    StdRng::seed_from_u64(seed)
}

/// Random guest writes and discards, applied to the disk and to `model`;
/// returns each as (offset, bytes written), zeroes for a discard.
fn scribble(rng: &mut StdRng, disk: &dyn Disk, model: &mut [u8], ops: usize) -> Vec<(usize, Vec<u8>)> {
    let size = model.len() as u64;
    let mut log = Vec::new();
    for _ in 0..ops {
        let sector = 512u64;
        let len = rng.gen_range(1..=160) * sector;
        let offset = rng.gen_range(0..(size - len) / sector) * sector;
        let range = offset as usize..(offset + len) as usize;
        if rng.gen_ratio(1, 8) && disk.supports_discard() {
            disk.discard(offset, len).unwrap();
            model[range].fill(0);
            log.push((offset as usize, vec![0; len as usize]));
        } else {
            let data: Vec<u8> =
                if rng.gen() { vec![rng.gen(); len as usize] } else { (0..len).map(|_| rng.gen()).collect() };
            disk.write_at(offset, &data).unwrap();
            model[range].copy_from_slice(&data);
            log.push((offset as usize, data));
        }
    }
    log
}

#[test]
fn images_qemu_made_read_as_qemu_reads_them() {
    let dir = TempDir::new("read");
    let mut rng = seeded();
    let content = sample(&mut rng, 3 << 20);
    let raw = dir.path("content.raw");
    std::fs::write(&raw, &content).unwrap();

    for (cluster, extra) in
        [("65536", &[][..]), ("4096", &[][..]), ("65536", &["-c"][..]), ("4096", &["-o", "compat=0.10"][..])]
    {
        let img = dir.path(&format!("q-{cluster}-{}.qcow2", extra.join("")));
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2", "-o"];
        let opt = format!("cluster_size={cluster}");
        args.push(&opt);
        args.extend_from_slice(extra);
        args.extend([s(&raw), s(&img)]);
        ok("qemu-img", &args);

        let disk = Qcow2Disk::open(&img, Qcow2Options { read_only: true, ..Default::default() }).unwrap();

        assert_eq!(disk.size(), content.len() as u64);
        assert_eq!(disk.cluster_size(), cluster.parse::<u64>().unwrap());
        assert!(read_all(&disk) == content, "{} reads as its source", img.display());
    }
}

#[test]
fn overlays_qemu_made_read_the_base_where_they_hold_nothing() {
    let dir = TempDir::new("qemu-overlay");
    let mut rng = seeded();
    let base_data = sample(&mut rng, 2 << 20);
    let base = dir.path("base.raw");
    std::fs::write(&base, &base_data).unwrap();

    for cluster in ["65536", "4096"] {
        let overlay = dir.path(&format!("ov-{cluster}.qcow2"));
        let opt = format!("cluster_size={cluster}");
        ok("qemu-img", &["create", "-f", "qcow2", "-o", &opt, "-b", s(&base), "-F", "raw", s(&overlay)]);
        // QEMU writes data, an all-zeroes range and a partial cluster.
        ok(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "write -P 0xab 65536 8192",
                "-c",
                "write -z 262144 131072",
                "-c",
                "write -P 0xcd 1049088 1024",
                s(&overlay),
            ],
        );
        let mut expected = base_data.clone();
        expected[65536..73728].fill(0xab);
        expected[262_144..393_216].fill(0);
        expected[1_049_088..1_050_112].fill(0xcd);

        let disk = open_image(&overlay, None, RawDiskOptions { read_only: true, ..Default::default() }).unwrap();

        assert!(read_all(disk.as_ref()) == expected, "{} reads as QEMU wrote it", overlay.display());
    }
    assert!(std::fs::read(&base).unwrap() == base_data);
}

#[test]
fn images_rblkback_wrote_pass_qemu_img_check_and_compare() {
    let dir = TempDir::new("write");
    let mut rng = seeded();
    let size = 4usize << 20;

    // Our own images at three cluster sizes (512 bytes makes the refcount
    // table grow), and one qemu-img made.
    for (name, bits) in [("ours-64k", 16), ("ours-4k", 12), ("ours-512", 9), ("qemu-64k", 16)] {
        let img = dir.path(&format!("{name}.qcow2"));
        if name.starts_with("qemu") {
            ok("qemu-img", &["create", "-f", "qcow2", s(&img), &size.to_string()]);
        } else {
            qcow2::create(&img, &CreateOptions { size: size as u64, cluster_bits: bits, backing: None }).unwrap();
        }
        let mut model = vec![0u8; size];

        let disk = Qcow2Disk::open(&img, Qcow2Options::default()).unwrap();
        let _ = scribble(&mut rng, &disk, &mut model, 300);
        if bits == 9 {
            // 512-byte clusters: 6 MiB of host clusters outgrow the first
            // refcount table (64 blocks of 128 KiB).
            disk.write_at(0, &vec![0x77; size]).unwrap();
            model.fill(0x77);
            let _ = scribble(&mut rng, &disk, &mut model, 100);
        }
        disk.flush().unwrap();
        drop(disk);

        assert_clean(&img);
        assert_same_as(&img, &model);
    }
}

#[test]
fn guest_overlays_over_a_shared_base_are_independent_and_leave_it_untouched() {
    let dir = TempDir::new("suite");
    let mut rng = seeded();
    let size = 3usize << 20;
    let base_data = sample(&mut rng, size);
    let raw_base = dir.path("base.img");
    std::fs::write(&raw_base, &base_data).unwrap();
    // The same base as qcow2 (4 KiB clusters), converted by QEMU.
    let qcow2_base = dir.path("base.qcow2");
    ok("qemu-img", &["convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096", s(&raw_base), s(&qcow2_base)]);
    let raw_before = std::fs::read(&raw_base).unwrap();
    let qcow2_before = std::fs::read(&qcow2_base).unwrap();

    for base in [&raw_base, &qcow2_base] {
        let g1 = dir.path("guest1.qcow2");
        let g2 = dir.path("guest2.qcow2");
        let _ = std::fs::remove_file(&g1);
        let _ = std::fs::remove_file(&g2);
        let base_name = Path::new(base.file_name().unwrap());
        assert_eq!(create_overlay(&g1, base_name, None).unwrap(), size as u64);
        assert_eq!(create_overlay(&g2, base, None).unwrap(), size as u64);
        let (mut m1, mut m2) = (base_data.clone(), base_data.clone());

        let d1 = open_image(&g1, Some(ImageFormat::Qcow2), RawDiskOptions::default()).unwrap();
        let d2 = open_image(&g2, Some(ImageFormat::Qcow2), RawDiskOptions::default()).unwrap();
        let _ = scribble(&mut rng, d1.as_ref(), &mut m1, 200);
        let _ = scribble(&mut rng, d2.as_ref(), &mut m2, 200);
        d1.flush().unwrap();
        d2.flush().unwrap();
        let (r1, r2) = (read_all(d1.as_ref()), read_all(d2.as_ref()));
        drop((d1, d2));

        assert!(r1 == m1 && r2 == m2, "each guest reads its own writes over the base");
        assert_ne!(m1, m2);
        let info = ok("qemu-img", &["info", s(&g1)]);
        assert!(info.contains("backing file: ") && info.contains("backing file format: "), "{info}");
        for (g, m) in [(&g1, &m1), (&g2, &m2)] {
            assert_clean(g);
            assert_same_as(g, m);
        }
    }
    assert!(std::fs::read(&raw_base).unwrap() == raw_before, "the raw base is byte-identical");
    assert!(std::fs::read(&qcow2_base).unwrap() == qcow2_before, "the qcow2 base is byte-identical");
}

#[test]
fn a_flush_makes_acknowledged_writes_survive_a_crash() {
    let dir = TempDir::new("crash");
    let mut rng = seeded();
    let size = 2usize << 20;
    let base = dir.path("base.raw");
    let base_data = sample(&mut rng, size);
    std::fs::write(&base, &base_data).unwrap();
    let img = dir.path("guest.qcow2");
    let backing = Some(BackingFile { name: "base.raw".into(), format: ImageFormat::Raw });
    qcow2::create(&img, &CreateOptions { size: size as u64, cluster_bits: 12, backing }).unwrap();
    let mut model = base_data.clone();

    let disk = Qcow2Disk::open(&img, Qcow2Options::default()).unwrap();
    let _ = scribble(&mut rng, &disk, &mut model, 200);
    disk.flush().unwrap();
    let flushed = model.clone();
    // Writes after the flush, then the process dies without writing back
    // its metadata cache (no Drop).
    let since = scribble(&mut rng, &disk, &mut model, 50);
    std::mem::forget(disk);

    let out = run("qemu-img", &["check", "-f", "qcow2", s(&img)]);
    let code = out.status.code();
    let reopened = Qcow2Disk::open(&img, Qcow2Options::default()).unwrap();
    let after = read_all(&reopened);

    // Leaked clusters (exit 3) are allowed after a crash, corruption is not.
    assert!(matches!(code, Some(0 | 3)), "qemu-img check after a crash: {code:?} {out:?}");
    // Every byte is as flushed, or as one of the writes since made it
    // (writes into clusters the image already held went straight to the
    // file; allocations since the flush are lost with the cache).
    let written_since = |i: usize| since.iter().any(|(at, data)| i >= *at && data.get(i - at) == Some(&after[i]));
    let bad = (0..size).find(|&i| after[i] != flushed[i] && !written_since(i));
    assert_eq!(bad, None, "byte {bad:?} is neither as flushed nor as written since");
}
