//! The generic shared ring of `xen/io/ring.h`.
