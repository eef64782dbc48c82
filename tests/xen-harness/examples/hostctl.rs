//! A development aid: boots the test host and runs the bash scripts that
//! appear in a directory, writing each one's output next to it.
//!
//! ```text
//! cargo run --release -p xen-harness --example hostctl -- /tmp/ctl &
//! echo 'xl info' > /tmp/ctl/1.sh; sleep 2; cat /tmp/ctl/1.out
//! echo 'exit' > /tmp/ctl/quit        # powers the host off
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use xen_harness::{HostConfig, XenHost};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: hostctl DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut host = XenHost::boot(HostConfig::new("hostctl").unwrap()).unwrap();
    std::fs::write(dir.join("ready"), host.dom0_release()).unwrap();
    loop {
        if dir.join("quit").exists() {
            break;
        }
        let mut scripts: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "sh"))
            .collect();
        scripts.sort();
        for s in scripts {
            let script = std::fs::read_to_string(&s).unwrap();
            std::fs::remove_file(&s).unwrap();
            let text = match host.run_with(&script, &[], Duration::from_secs(600)) {
                Ok(o) => format!(
                    "{}{}--- status {} in {:.1} s\n",
                    o.stdout,
                    o.stderr,
                    o.status,
                    o.elapsed.as_secs_f64()
                ),
                Err(e) => format!("--- error: {e}\n"),
            };
            std::fs::write(s.with_extension("out"), text).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    host.shutdown().unwrap();
}
