//! The store against temporary directories; overlays against `qemu-img`;
//! configuration disks against the system's `tar`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use rblkback::{open_image, RawDiskOptions};

use crate::configdisk::{disk_image, MIN_DISK_SIZE};
use crate::{
    create_overlay, write_config_disk, ConfigData, ImageFormat, ImportOutcome, OverlayError,
    Server, Store, StoreError, Suite, ValidationError,
};

fn suite(name: &str) -> Suite {
    Suite {
        name: name.to_owned(),
        kernel: "/srv/suites/vmlinuz".into(),
        ramdisk: Some("/srv/suites/initrd.img".into()),
        image: format!("/srv/suites/{name}.img").into(),
        image_format: ImageFormat::Raw,
        cmdline: "console=hvc0 root=/dev/xvda".to_owned(),
        memory_mib: 256,
        vcpus: 2,
        added_at: 1_700_000_000,
    }
}

fn config(hostname: &str) -> ConfigData {
    ConfigData {
        hostname: hostname.to_owned(),
        addresses: vec![
            ("eth0".into(), "192.0.2.10/24".into()),
            ("eth0".into(), "2001:db8::10/64".into()),
        ],
        gateway: Some("192.0.2.1".into()),
        params: BTreeMap::from([
            ("workers".into(), "4".into()),
            ("log.level".into(), "debug = yes".into()),
        ]),
        files: BTreeMap::from([
            ("/etc/motd".into(), b"hello\n".to_vec()),
            ("/etc/app/key.bin".into(), (0..=255u8).collect()),
            ("/empty".into(), Vec::new()),
        ]),
    }
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("store.redb")).unwrap()
}

#[test]
fn suites_and_servers_persist_across_opens() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.add_suite(&suite("debian12")).unwrap();
    store.add_suite(&suite("alpine")).unwrap();
    let web = Server {
        created_at: 42,
        ..Server::new("web1", "debian12", config("web1"))
    };
    store.add_server(&web).unwrap();
    drop(store);

    let store = open(&dir);

    let names: Vec<_> = store
        .list_suites()
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["alpine", "debian12"]);
    assert_eq!(store.suite("debian12").unwrap(), suite("debian12"));
    assert_eq!(store.server("web1").unwrap(), web);
    assert_eq!(store.list_servers().unwrap(), [web]);
}

#[test]
fn names_are_unique_and_lookups_of_missing_names_fail() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.add_suite(&suite("debian12")).unwrap();
    store
        .add_server(&Server::new("web1", "debian12", config("web1")))
        .unwrap();

    assert!(
        matches!(store.add_suite(&suite("debian12")), Err(StoreError::SuiteExists(n)) if n == "debian12")
    );
    let again = store.add_server(&Server::new("web1", "debian12", config("other")));
    assert!(matches!(again, Err(StoreError::ServerExists(n)) if n == "web1"));
    assert_eq!(
        store.server("web1").unwrap().config.hostname,
        "web1",
        "the failed add changed nothing"
    );
    assert!(matches!(
        store.suite("nope"),
        Err(StoreError::NoSuchSuite(_))
    ));
    assert!(matches!(
        store.server("nope"),
        Err(StoreError::NoSuchServer(_))
    ));
    assert!(matches!(
        store.remove_server("nope"),
        Err(StoreError::NoSuchServer(_))
    ));
    assert!(matches!(
        store.remove_suite("nope"),
        Err(StoreError::NoSuchSuite(_))
    ));
    let orphan = store.add_server(&Server::new("db1", "nope", config("db1")));
    assert!(matches!(orphan, Err(StoreError::NoSuchSuite(s)) if s == "nope"));
}

#[test]
fn a_suite_in_use_cannot_be_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.add_suite(&suite("debian12")).unwrap();
    store
        .add_server(&Server::new("web1", "debian12", config("web1")))
        .unwrap();
    store
        .add_server(&Server::new("web2", "debian12", config("web2")))
        .unwrap();

    let refused = store.remove_suite("debian12");
    store.remove_server("web1").unwrap();
    store.remove_server("web2").unwrap();
    let removed = store.remove_suite("debian12").unwrap();

    match refused {
        Err(e @ StoreError::SuiteInUse { .. }) => {
            assert_eq!(
                e.to_string(),
                "suite debian12 is used by server(s) web1, web2; remove them first"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(removed, suite("debian12"));
    assert!(store.list_suites().unwrap().is_empty());
}

#[test]
fn updates_replace_the_configuration_and_keep_the_creation_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.add_suite(&suite("debian12")).unwrap();
    store
        .add_server(&Server {
            created_at: 7,
            ..Server::new("web1", "debian12", config("web1"))
        })
        .unwrap();

    store
        .update_server(&Server::new(
            "web1",
            "debian12",
            ConfigData::with_hostname("www"),
        ))
        .unwrap();
    let missing = store.update_server(&Server::new("web9", "debian12", config("web9")));

    let server = store.server("web1").unwrap();
    assert_eq!(
        (server.config, server.created_at),
        (ConfigData::with_hostname("www"), 7)
    );
    assert!(matches!(missing, Err(StoreError::NoSuchServer(_))));
}

#[test]
fn invalid_values_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.add_suite(&suite("debian12")).unwrap();
    let with = |f: fn(&mut ConfigData)| {
        let mut c = config("web1");
        f(&mut c);
        store.add_server(&Server::new("web1", "debian12", c))
    };

    let bad_name = store.add_suite(&suite("a/b"));
    let relative = store.add_suite(&Suite {
        kernel: "vmlinuz".into(),
        ..suite("x")
    });
    let hostname = with(|c| c.hostname = "under_score".into());
    let cidr = with(|c| c.addresses.push(("eth1".into(), "10.0.0.1/40".into())));
    let gateway = with(|c| c.gateway = Some("nowhere".into()));
    let escape = with(|c| {
        c.files
            .insert("/etc/../../root/.ssh/authorized_keys".into(), Vec::new());
    });
    let param = with(|c| {
        c.params.insert("k".into(), "two\nlines".into());
    });

    assert!(matches!(
        bad_name,
        Err(StoreError::Invalid(ValidationError::Name { .. }))
    ));
    assert!(matches!(
        relative,
        Err(StoreError::Invalid(ValidationError::HostPath {
            what: "kernel",
            ..
        }))
    ));
    assert!(matches!(
        hostname,
        Err(StoreError::Invalid(ValidationError::Hostname { .. }))
    ));
    assert!(matches!(
        cidr,
        Err(StoreError::Invalid(ValidationError::Cidr { .. }))
    ));
    assert!(matches!(
        gateway,
        Err(StoreError::Invalid(ValidationError::Gateway(_)))
    ));
    assert!(matches!(
        escape,
        Err(StoreError::Invalid(ValidationError::GuestPath { .. }))
    ));
    assert!(matches!(
        param,
        Err(StoreError::Invalid(ValidationError::Param { .. }))
    ));
    assert!(store.list_servers().unwrap().is_empty());
    assert_eq!(store.list_suites().unwrap().len(), 1);
}

#[test]
fn export_then_import_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.add_suite(&suite("debian12")).unwrap();
    store
        .add_server(&Server::new("web1", "debian12", config("web1")))
        .unwrap();
    let exported = store.export_server("web1").unwrap();

    let other_dir = tempfile::tempdir().unwrap();
    let other = open(&other_dir);
    other.add_suite(&suite("debian12")).unwrap();
    let created = other.import_server(&exported).unwrap();
    let again = other.export_server("web1").unwrap();

    assert_eq!(created, ("web1".to_owned(), ImportOutcome::Created));
    assert_eq!(again, exported);
    assert_eq!(other.server("web1").unwrap().config, config("web1"));
    assert!(
        exported.contains("\"/etc/motd\": \"aGVsbG8K\""),
        "{exported}"
    );
    assert!(
        exported.contains("\"format\": \"rxl-server-config\""),
        "{exported}"
    );
}

#[test]
fn import_replaces_the_configuration_of_an_existing_server() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.add_suite(&suite("debian12")).unwrap();
    store.add_suite(&suite("alpine")).unwrap();
    store
        .add_server(&Server {
            created_at: 9,
            ..Server::new("web1", "debian12", config("web1"))
        })
        .unwrap();
    let mut export = crate::ServerExport::from_server(&Server::new(
        "web1",
        "debian12",
        ConfigData::with_hostname("www"),
    ));
    let replacing = export.to_json().unwrap();
    export.suite = "alpine".into();
    let other_suite = export.to_json().unwrap();

    let replaced = store.import_server(&replacing).unwrap();
    let mismatch = store.import_server(&other_suite);

    let server = store.server("web1").unwrap();
    assert_eq!(replaced.1, ImportOutcome::Replaced);
    assert_eq!(
        (server.config, server.created_at, server.suite.as_str()),
        (ConfigData::with_hostname("www"), 9, "debian12")
    );
    assert!(matches!(mismatch, Err(StoreError::SuiteMismatch { .. })));
}

#[test]
fn imports_of_other_documents_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.add_suite(&suite("debian12")).unwrap();
    let doc = |extra: &str| {
        format!(
            "{{\"format\":\"rxl-server-config\",\"version\":1,\"name\":\"web1\",\"suite\":\"debian12\",\
             \"config\":{{\"hostname\":\"web1\"{extra}}}}}"
        )
    };

    let minimal = store.import_server(&doc(""));
    let typo = store.import_server(&doc(",\"gatway\":\"192.0.2.1\""));
    let not_base64 = store.import_server(&doc(",\"files\":{\"/x\":\"!!\"}"));
    let version = store.import_server(&doc("").replace("\"version\":1", "\"version\":2"));
    let garbage = store.import_server("not json");

    assert_eq!(minimal.unwrap().1, ImportOutcome::Created);
    assert!(matches!(typo, Err(StoreError::Import(_))), "{typo:?}");
    assert!(
        matches!(not_base64, Err(StoreError::Import(_))),
        "{not_base64:?}"
    );
    assert!(
        matches!(version, Err(StoreError::ImportFormat { version: 2, .. })),
        "{version:?}"
    );
    assert!(matches!(garbage, Err(StoreError::Import(_))));
}

#[test]
fn a_newer_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    drop(Store::open(&path).unwrap());
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .insert("schema", 99)
            .unwrap();
        txn.commit().unwrap();
    }

    let reopened = Store::open(&path);

    assert!(
        matches!(reopened, Err(StoreError::Schema { found: 99, .. })),
        "{reopened:?}"
    );
}

#[test]
fn two_handles_see_each_others_commits() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(&dir);
    let second = open(&dir);

    first.add_suite(&suite("debian12")).unwrap();
    second
        .add_server(&Server::new("web1", "debian12", config("web1")))
        .unwrap();

    assert_eq!(first.server("web1").unwrap().suite, "debian12");
}

#[test]
fn the_store_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lib/rxl/store.redb");

    drop(Store::open(&path).unwrap());

    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
}

// --- overlays -------------------------------------------------------------

/// Runs `qemu-img ARGS`; fails the test if qemu-img is not installed.
fn qemu_img(args: &[&str]) -> (bool, String) {
    let out = match Command::new("qemu-img").args(args).output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run qemu-img ({e}): install it (Debian: apt-get install qemu-utils) to run these tests"),
    };
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn qemu_info(path: &Path) -> serde_json::Value {
    let (ok, text) = qemu_img(&["info", "--output=json", path.to_str().unwrap()]);
    assert!(ok, "qemu-img info: {text}");
    serde_json::from_str(&text).unwrap()
}

fn raw_base(dir: &Path, size: usize) -> PathBuf {
    let base = dir.join("base.img");
    let bytes: Vec<u8> = (0..size).map(|i| (i / 512) as u8).collect();
    std::fs::write(&base, bytes).unwrap();
    base
}

#[test]
fn an_overlay_over_a_raw_image_passes_qemu_img_check_and_reads_its_base() {
    let dir = tempfile::tempdir().unwrap();
    let base = raw_base(dir.path(), 3 << 20);
    let overlay = dir.path().join("root.qcow2");

    let size = create_overlay(&overlay, &base, ImageFormat::Raw, None).unwrap();

    let (ok, check) = qemu_img(&["check", overlay.to_str().unwrap()]);
    assert!(ok, "qemu-img check: {check}");
    assert!(check.contains("No errors were found"), "{check}");
    let info = qemu_info(&overlay);
    assert_eq!(size, 3 << 20);
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 3 << 20);
    assert_eq!(info["backing-filename"], base.to_str().unwrap());
    assert_eq!(info["backing-filename-format"], "raw");
    assert_eq!(
        info["format-specific"]["data"]["compat"], "1.1",
        "qcow2 version 3"
    );
    assert_eq!(
        crate::overlay::backing_of(&overlay).unwrap().as_deref(),
        Some(base.as_path())
    );
    assert_eq!(
        crate::overlay::detect_format(&overlay).unwrap(),
        ImageFormat::Qcow2
    );
    assert_eq!(
        crate::overlay::detect_format(&base).unwrap(),
        ImageFormat::Raw
    );
    // rblkback serves it: reads come from the base, writes stay in the overlay.
    let disk = open_image(&overlay, None, RawDiskOptions::default()).unwrap();
    let mut sector = vec![0u8; 512];
    disk.read_at(5 * 512, &mut sector).unwrap();
    assert!(sector.iter().all(|&b| b == 5));
    disk.write_at(0, &[0xee; 512]).unwrap();
    disk.flush().unwrap();
    drop(disk);
    assert!(
        std::fs::read(&base).unwrap()[..512].iter().all(|&b| b == 0),
        "the base is never written"
    );
    let (ok, check) = qemu_img(&["check", overlay.to_str().unwrap()]);
    assert!(ok, "qemu-img check after a write: {check}");
}

#[test]
fn an_overlay_over_a_qcow2_image_can_be_larger_than_it() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("suite.qcow2");
    let (ok, text) = qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "1M"]);
    assert!(ok, "qemu-img create: {text}");
    let overlay = dir.path().join("root.qcow2");

    let size = create_overlay(&overlay, &base, ImageFormat::Qcow2, Some((4 << 20) - 100)).unwrap();

    let (ok, check) = qemu_img(&["check", overlay.to_str().unwrap()]);
    assert!(ok, "qemu-img check: {check}");
    let info = qemu_info(&overlay);
    assert_eq!(size, 4 << 20, "rounded up to whole sectors");
    assert_eq!(info["virtual-size"], 4 << 20);
    assert_eq!(info["backing-filename"], base.to_str().unwrap());
    assert_eq!(info["backing-filename-format"], "qcow2");
    let disk = open_image(
        &overlay,
        None,
        RawDiskOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(disk.size(), 4 << 20);
}

#[test]
fn overlays_are_never_overwritten_or_smaller_than_their_base() {
    let dir = tempfile::tempdir().unwrap();
    let base = raw_base(dir.path(), 1 << 20);
    let overlay = dir.path().join("root.qcow2");
    create_overlay(&overlay, &base, ImageFormat::Raw, None).unwrap();

    let again = create_overlay(&overlay, &base, ImageFormat::Raw, None);
    let small = create_overlay(
        &dir.path().join("small.qcow2"),
        &base,
        ImageFormat::Raw,
        Some(4096),
    );
    let missing = create_overlay(
        &dir.path().join("x.qcow2"),
        &dir.path().join("nope.img"),
        ImageFormat::Raw,
        None,
    );
    let wrong_format = create_overlay(&dir.path().join("y.qcow2"), &base, ImageFormat::Qcow2, None);

    assert!(
        matches!(again, Err(OverlayError::Create { .. })),
        "{again:?}"
    );
    assert!(
        matches!(
            small,
            Err(OverlayError::TooSmall {
                size: 4096,
                backing_size: 1048576
            })
        ),
        "{small:?}"
    );
    assert!(
        matches!(missing, Err(OverlayError::Backing { .. })),
        "{missing:?}"
    );
    assert!(
        matches!(wrong_format, Err(OverlayError::Backing { .. })),
        "{wrong_format:?}"
    );
    assert!(!dir.path().join("small.qcow2").exists());
}

// --- configuration disks ---------------------------------------------------

/// Extracts the disk at `disk` with the system's `tar` into a new
/// directory and returns it.
fn extract(disk: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let out = Command::new("tar")
        .arg("-xf")
        .arg(disk)
        .arg("-C")
        .arg(into)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar -x: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_system_tar_extracts_the_configuration_disk_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("config.img");
    let mut data = config("web1");
    let deep = format!("/opt/{}/settings.conf", "d".repeat(150));
    data.files.insert(deep.clone(), b"long path\n".to_vec());

    let size = write_config_disk(&disk, &data, 1_700_000_000).unwrap();

    let root = dir.path().join("guest");
    extract(&disk, &root);
    let read = |p: &str| std::fs::read(root.join(p)).unwrap();
    assert_eq!(size, std::fs::metadata(&disk).unwrap().len());
    assert_eq!(size % 512, 0);
    assert!(size >= MIN_DISK_SIZE);
    assert_eq!(read("rxl/hostname"), b"web1\n");
    assert_eq!(
        read("rxl/addresses"),
        b"eth0 192.0.2.10/24\neth0 2001:db8::10/64\n"
    );
    assert_eq!(read("rxl/gateway"), b"192.0.2.1\n");
    assert_eq!(read("rxl/params"), b"log.level=debug = yes\nworkers=4\n");
    assert_eq!(read("files/etc/motd"), b"hello\n");
    assert_eq!(
        read("files/etc/app/key.bin"),
        (0..=255u8).collect::<Vec<_>>()
    );
    assert_eq!(read("files/empty"), b"");
    assert_eq!(read(&format!("files{deep}")), b"long path\n");
    let listing = Command::new("tar").arg("-tvf").arg(&disk).output().unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert!(
        listing.lines().all(|l| l.contains("root/root")),
        "{listing}"
    );
    assert!(
        listing.contains("-rw-r--r-- root/root         6 2023-11-14 22:13 files/etc/motd"),
        "{listing}"
    );
}

#[test]
fn the_configuration_disk_of_minimal_data_has_empty_files_and_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let data = ConfigData::with_hostname("db1");
    let image = disk_image(&data, 0).unwrap();
    let disk = dir.path().join("config.img");
    std::fs::write(&disk, &image).unwrap();

    let root = dir.path().join("guest");
    extract(&disk, &root);

    assert_eq!(image.len() as u64, MIN_DISK_SIZE);
    assert_eq!(image, disk_image(&data, 0).unwrap());
    assert_eq!(std::fs::read(root.join("rxl/hostname")).unwrap(), b"db1\n");
    for empty in ["rxl/addresses", "rxl/gateway", "rxl/params"] {
        assert_eq!(std::fs::read(root.join(empty)).unwrap(), b"", "{empty}");
    }
    assert!(std::fs::read_dir(root.join("files"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn a_configuration_disk_is_replaced_whole_and_refuses_escaping_paths() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("config.img");
    write_config_disk(&disk, &config("web1"), 0).unwrap();
    let mut bad = ConfigData::with_hostname("web1");
    bad.files.insert("/../etc/shadow".into(), Vec::new());

    write_config_disk(&disk, &ConfigData::with_hostname("web2"), 0).unwrap();
    let refused = write_config_disk(&disk, &bad, 0);

    let root = dir.path().join("guest");
    extract(&disk, &root);
    assert_eq!(std::fs::read(root.join("rxl/hostname")).unwrap(), b"web2\n");
    assert!(!root.join("files/etc/motd").exists());
    assert!(matches!(refused, Err(crate::ConfigDiskError::Invalid(_))));
    assert!(!dir.path().join("config.img.new").exists());
}
