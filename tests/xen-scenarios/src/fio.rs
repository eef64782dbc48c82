//! The block benchmarks' `fio` runs in guests: the same jobs, the same
//! `RXEN-FIO` console lines, and their parsing into per-job tables.

use std::collections::BTreeMap;

/// A benchmark job: its name, fio arguments, and whether it is reported
/// in MB/s (true) or IOPS (false).
pub type Job = (&'static str, &'static str, bool);

/// The jobs of the block benchmarks: sequential 1 MiB write and read (8 in
/// flight) and 4 KiB random read at queue depth 1 and 32.
pub const JOBS: [Job; 4] = [
    ("seq-write-1M", "--rw=write --bs=1M --iodepth=8", true),
    ("seq-read-1M", "--rw=read --bs=1M --iodepth=8", true),
    ("rand-read-4K-qd1", "--rw=randread --bs=4k --iodepth=1", false),
    ("rand-read-4K-qd32", "--rw=randread --bs=4k --iodepth=32", false),
];

/// A guest shell line running `job` on `filename` (O_DIRECT, io_uring,
/// `size_mib` MiB, measured for `seconds` after a one-second ramp) that prints `RXEN-FIO LABELS job=JOB
/// rkib=.. riops=.. wkib=.. wiops=..`, or `RXEN-FIO LABELS job=JOB failed
/// ...`. `labels` is shell text expanded at run time, e.g. `dev=$d round=$round`.
pub fn command(job: &Job, filename: &str, size_mib: u32, seconds: u32, labels: &str) -> String {
    let (name, args, _) = job;
    // Terse output: field 7/8 = read KiB/s / IOPS, 48/49 = write.
    format!(
        "fio --name={name} --filename={filename} --direct=1 --ioengine=io_uring {args} \
         --size={size_mib}M --ramp_time=1 --runtime={seconds} --time_based --minimal 2>/tmp/fio.err | \
         awk -F';' -v l=\"{labels}\" '{{print \"RXEN-FIO \" l \" job={name} rkib=\" $7 \" riops=\" $8 \" wkib=\" $48 \" wiops=\" $49}}' || \
         echo \"RXEN-FIO {labels} job={name} failed $(cat /tmp/fio.err)\"\n"
    )
}

/// Seconds each job runs: `RXEN_BLK_BENCH_SECONDS`, default 4.
pub fn seconds() -> u32 {
    std::env::var("RXEN_BLK_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(4)
}

/// Results: `rows[job][group] = values`, one per round.
pub type Rows = BTreeMap<String, BTreeMap<String, Vec<f64>>>;

/// Collects the `RXEN-FIO` lines of `console` (printing each) into rows,
/// grouped by the label `key` (e.g. `dev`), whose value `group` renames.
pub fn rows(console: &str, jobs: &[Job], key: &str, group: impl Fn(&str) -> String) -> Rows {
    let mut rows = Rows::new();
    for line in console.lines().filter_map(|l| l.split_once("RXEN-FIO ").map(|(_, r)| r)) {
        println!("  {line}");
        let kv: BTreeMap<&str, &str> = line.split_whitespace().filter_map(|w| w.split_once('=')).collect();
        let (Some(g), Some(job)) = (kv.get(key), kv.get("job")) else {
            continue;
        };
        let Some((_, _, mbps)) = jobs.iter().find(|(j, _, _)| j == job) else {
            continue;
        };
        let num = |k: &str| kv.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let value = match (*mbps, job.contains("write")) {
            (true, true) => num("wkib") * 1024.0 / 1e6,
            (true, false) => num("rkib") * 1024.0 / 1e6,
            (false, true) => num("wiops"),
            (false, false) => num("riops"),
        };
        rows.entry((*job).to_owned()).or_default().entry(group(g)).or_default().push(value);
    }
    rows
}

/// The median of `rows[job][group]`, 0 if there is none.
pub fn median(rows: &Rows, job: &str, group: &str) -> f64 {
    let mut v = rows.get(job).and_then(|r| r.get(group)).cloned().unwrap_or_default();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn rows_take_the_reported_column_of_each_job_by_group() {
        let console = "noise\n\
            RXEN-FIO dev=xvdb round=1 job=seq-write-1M rkib=0 riops=0 wkib=100000 wiops=97\n\
            RXEN-FIO dev=xvdb round=2 job=seq-write-1M rkib=0 riops=0 wkib=300000 wiops=290\n\
            RXEN-FIO dev=xvdb round=3 job=seq-write-1M rkib=0 riops=0 wkib=200000 wiops=195\n\
            RXEN-FIO dev=xvdc round=1 job=rand-read-4K-qd1 rkib=4000 riops=1000 wkib=0 wiops=0\n\
            RXEN-FIO dev=xvdc job=rand-read-4K-qd1 failed oops\n";
        let rows = rows(console, &JOBS, "dev", |d| format!("<{d}>"));
        assert_eq!(rows["seq-write-1M"]["<xvdb>"].len(), 3);
        assert!((median(&rows, "seq-write-1M", "<xvdb>") - 200000.0 * 1024.0 / 1e6).abs() < 1e-9);
        // The failed line has no numbers: it counts as 0, and is visible as such.
        assert_eq!(rows["rand-read-4K-qd1"]["<xvdc>"], vec![1000.0, 0.0]);
        assert_eq!(median(&rows, "seq-read-1M", "<xvdb>"), 0.0);
    }

    #[test]
    fn command_labels_both_outcomes() {
        let c = command(&JOBS[2], "/dev/$d", 128, 4, "dev=$d round=$round");
        assert!(c.contains("--rw=randread --bs=4k --iodepth=1"));
        assert!(c.contains("-v l=\"dev=$d round=$round\""));
        assert!(c.contains("echo \"RXEN-FIO dev=$d round=$round job=rand-read-4K-qd1 failed"));
    }
}
