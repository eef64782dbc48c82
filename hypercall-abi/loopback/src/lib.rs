//! The loopback platform: two processes on one Linux host.
