//! Memory: `mem-set`, as xl 4.17's `xl_mem.c`.

use clap::Args;

use super::format::parse_mem_size_kb;
use super::{find_domain, CommandError};
use crate::host::Host;

/// `mem-set <Domain> <MemMB['b'[bytes]|'k'[KB]|'m'[MB]|'g'[GB]|'t'[TB]]>`.
#[derive(Debug, Args)]
pub struct MemSetArgs {
    /// The domain.
    #[arg(value_name = "Domain")]
    pub domain: String,
    /// The new target: a number with an optional unit suffix b, k, m
    /// (default), g or t.
    #[arg(value_name = "Mem", allow_hyphen_values = true)]
    pub size: String,
}

/// `mem-set`: xl's `set_memory_target`.
pub(super) fn mem_set(args: &MemSetArgs, host: &mut dyn Host) -> Result<(), CommandError> {
    let domid = find_domain(host, &args.domain)?;
    let kib =
        parse_mem_size_kb(&args.size).ok_or_else(|| CommandError::MemorySize(args.size.clone()))?;
    let fail = |source| CommandError::MemSet {
        domid,
        size: args.size.clone(),
        source,
    };
    // A negative size parses in xl too, and then libxl refuses it.
    let kib = u64::try_from(kib).map_err(|_| fail(None))?;
    host.set_memory_target(domid, kib)
        .map_err(|e| fail(Some(e)))
}
