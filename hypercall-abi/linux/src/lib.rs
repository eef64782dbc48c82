//! The Linux platform: Xen through `/dev/xen/*`.
