//! Checks of what users put into the store: names, hostnames, addresses,
//! parameters and guest paths. Each check returns the value's problem as a
//! [`ValidationError`] that names the value and says what is wrong.

use std::net::IpAddr;
use std::path::Path;

/// The longest suite or server name (Xen's domain names have no limit of
/// their own; this keeps the directory and xenstore names reasonable).
pub const MAX_NAME_LEN: usize = 64;
/// The longest network interface name Linux takes (`IFNAMSIZ - 1`).
pub const MAX_IFACE_LEN: usize = 15;
/// The longest guest path of a configuration file.
pub const MAX_GUEST_PATH_LEN: usize = 4096;

/// A value the store refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A suite or server name with characters or a length a domain name
    /// cannot have.
    #[error("invalid {kind} name {name:?}: {why}")]
    Name {
        /// `"suite"` or `"server"`.
        kind: &'static str,
        /// The name.
        name: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A hostname that RFC 1123 does not allow.
    #[error("invalid hostname {hostname:?}: {why}")]
    Hostname {
        /// The hostname.
        hostname: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A network interface name Linux would refuse.
    #[error("invalid interface name {iface:?}: {why}")]
    Interface {
        /// The interface name.
        iface: String,
        /// What is wrong.
        why: &'static str,
    },
    /// An address that is not `IP/PREFIX`.
    #[error("invalid address {cidr:?}: {why}; write it as IP/PREFIX, e.g. 192.0.2.10/24 or 2001:db8::10/64")]
    Cidr {
        /// The address as given.
        cidr: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A gateway that is not an IP address.
    #[error("invalid gateway {0:?}: it must be an IPv4 or IPv6 address without a prefix")]
    Gateway(String),
    /// A tuning parameter that cannot be written as one `key=value` line.
    #[error("invalid parameter {key:?}: {why}")]
    Param {
        /// The key.
        key: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A guest path of a configuration file that is not a plain absolute
    /// path.
    #[error("invalid guest path {path:?}: {why}")]
    GuestPath {
        /// The path.
        path: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A dom0 path (kernel, ramdisk, image) that cannot be written into an
    /// `xl.cfg` file.
    #[error("invalid {what} path {path:?}: {why}")]
    HostPath {
        /// `"kernel"`, `"ramdisk"` or `"image"`.
        what: &'static str,
        /// The path, lossily.
        path: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A kernel command line that is not one line of text.
    #[error("invalid kernel command line {0:?}: it must not contain control characters")]
    Cmdline(String),
    /// A memory size or vCPU count of zero.
    #[error("invalid {what}: it must be at least 1")]
    Zero {
        /// `"memory"` or `"vcpus"`.
        what: &'static str,
    },
}

/// Checks a suite or server name: 1 to [`MAX_NAME_LEN`] of
/// `[A-Za-z0-9._-]`, not `.` or `..`, not starting with `-`. These are
/// valid Xen domain names and directory names.
pub fn name(kind: &'static str, name: &str) -> Result<(), ValidationError> {
    let fail = |why| {
        Err(ValidationError::Name {
            kind,
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() {
        return fail("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return fail("it is longer than 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return fail("only letters, digits, '.', '_' and '-' are allowed");
    }
    if name == "." || name == ".." {
        return fail("'.' and '..' are reserved");
    }
    if name.starts_with('-') {
        return fail("it must not start with '-'");
    }
    Ok(())
}

/// Checks a hostname as RFC 1123 (section 2.1) allows: dot-separated
/// labels of 1 to 63 letters, digits and hyphens, not starting or ending
/// with a hyphen, at most 253 characters in all.
pub fn hostname(hostname: &str) -> Result<(), ValidationError> {
    let fail = |why| {
        Err(ValidationError::Hostname {
            hostname: hostname.to_owned(),
            why,
        })
    };
    if hostname.is_empty() {
        return fail("it is empty");
    }
    if hostname.len() > 253 {
        return fail("it is longer than 253 characters");
    }
    for label in hostname.split('.') {
        if label.is_empty() {
            return fail("it has an empty label");
        }
        if label.len() > 63 {
            return fail("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return fail("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return fail("a label starts or ends with '-'");
        }
    }
    Ok(())
}

/// Checks a guest network interface name: 1 to [`MAX_IFACE_LEN`] of
/// `[A-Za-z0-9._-]`.
pub fn iface(iface: &str) -> Result<(), ValidationError> {
    let fail = |why| {
        Err(ValidationError::Interface {
            iface: iface.to_owned(),
            why,
        })
    };
    if iface.is_empty() {
        return fail("it is empty");
    }
    if iface.len() > MAX_IFACE_LEN {
        return fail("it is longer than 15 characters");
    }
    if !iface
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return fail("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Checks an address in CIDR notation, IPv4 (`/0` to `/32`) or IPv6
/// (`/0` to `/128`), written as Rust's standard parser reads addresses.
pub fn cidr(cidr: &str) -> Result<(), ValidationError> {
    let fail = |why| {
        Err(ValidationError::Cidr {
            cidr: cidr.to_owned(),
            why,
        })
    };
    let Some((ip, prefix)) = cidr.split_once('/') else {
        return fail("it has no /PREFIX");
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return fail("the address is not an IPv4 or IPv6 address");
    };
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return fail("the prefix length is not a number");
    }
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match prefix.parse::<u8>() {
        Ok(len) if len <= max => Ok(()),
        _ => fail("the prefix length is too long for the address"),
    }
}

/// Checks a gateway: an IPv4 or IPv6 address.
pub fn gateway(gateway: &str) -> Result<(), ValidationError> {
    gateway
        .parse::<IpAddr>()
        .map(drop)
        .map_err(|_| ValidationError::Gateway(gateway.to_owned()))
}

/// Checks a tuning parameter, written to the guest as a `key=value` line:
/// the key is 1 to 256 of `[A-Za-z0-9._-]`; the value has no control
/// characters.
pub fn param(key: &str, value: &str) -> Result<(), ValidationError> {
    let fail = |why| {
        Err(ValidationError::Param {
            key: key.to_owned(),
            why,
        })
    };
    if key.is_empty() {
        return fail("the key is empty");
    }
    if key.len() > 256 {
        return fail("the key is longer than 256 characters");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return fail("the key may only have letters, digits, '.', '_' and '-'");
    }
    if value.chars().any(char::is_control) {
        return fail("the value has a control character (a newline?)");
    }
    Ok(())
}

/// Checks the guest path of a configuration file: absolute, at most
/// [`MAX_GUEST_PATH_LEN`] bytes, with no empty, `.` or `..` components and
/// no control characters, and not `/` itself.
pub fn guest_path(path: &str) -> Result<(), ValidationError> {
    let fail = |why| {
        Err(ValidationError::GuestPath {
            path: path.to_owned(),
            why,
        })
    };
    let Some(rest) = path.strip_prefix('/') else {
        return fail("it must be absolute");
    };
    if path.len() > MAX_GUEST_PATH_LEN {
        return fail("it is longer than 4096 bytes");
    }
    if path.chars().any(char::is_control) {
        return fail("it has a control character");
    }
    if rest.is_empty() {
        return fail("it names the root directory, not a file");
    }
    for component in rest.split('/') {
        match component {
            "" => return fail("it has an empty component ('//' or a trailing '/')"),
            "." | ".." => return fail("'.' and '..' components are not allowed"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a dom0 path recorded in a suite: absolute, UTF-8 and free of
/// control characters, so that it can be written into an `xl.cfg` file.
pub fn host_path(what: &'static str, path: &Path) -> Result<(), ValidationError> {
    let fail = |why| {
        Err(ValidationError::HostPath {
            what,
            path: path.to_string_lossy().into_owned(),
            why,
        })
    };
    let Some(text) = path.to_str() else {
        return fail("it is not UTF-8");
    };
    if !path.is_absolute() {
        return fail("it must be absolute");
    }
    if text.chars().any(char::is_control) {
        return fail("it has a control character");
    }
    Ok(())
}

/// Checks a kernel command line: no control characters.
pub fn cmdline(cmdline: &str) -> Result<(), ValidationError> {
    if cmdline.chars().any(char::is_control) {
        return Err(ValidationError::Cmdline(cmdline.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_domain_and_directory_names() {
        for good in ["web1", "db.primary", "a_b-c", "X"] {
            assert_eq!(name("server", good), Ok(()), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "-x", "é", &"a".repeat(65)] {
            assert!(name("server", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostnames_follow_rfc_1123() {
        for good in ["web1", "1web", "web-1.example.com", &"a".repeat(63)] {
            assert_eq!(hostname(good), Ok(()), "{good}");
        }
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63),
        ]
        .join(".");
        for bad in [
            "",
            "-web",
            "web-",
            "a..b",
            "web_1",
            "web.",
            &"a".repeat(64),
            &long,
        ] {
            assert!(hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn addresses_are_cidrs_with_a_prefix_that_fits() {
        for good in [
            "192.0.2.10/24",
            "0.0.0.0/0",
            "10.0.0.1/32",
            "2001:db8::1/64",
            "::/128",
        ] {
            assert_eq!(cidr(good), Ok(()), "{good}");
        }
        for bad in [
            "192.0.2.10",
            "192.0.2.10/33",
            "192.0.2/24",
            "2001:db8::1/129",
            "1.2.3.4/+1",
            "1.2.3.4/",
            "x/8",
        ] {
            assert!(cidr(bad).is_err(), "{bad:?}");
        }
        assert_eq!(gateway("192.0.2.1"), Ok(()));
        assert!(gateway("192.0.2.1/24").is_err());
        assert!(iface("eth0").is_ok() && iface("").is_err() && iface("a/b").is_err());
        assert!(iface(&"e".repeat(16)).is_err());
    }

    #[test]
    fn guest_paths_are_plain_absolute_paths() {
        for good in ["/etc/motd", "/etc/app/conf.d/10-x.conf", "/.hidden"] {
            assert_eq!(guest_path(good), Ok(()), "{good}");
        }
        for bad in [
            "etc/motd",
            "/",
            "/etc/../root/x",
            "/etc/./x",
            "/etc//x",
            "/etc/",
            "/a\nb",
        ] {
            assert!(guest_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn params_are_single_lines() {
        assert_eq!(param("net.core.somaxconn", "1024"), Ok(()));
        assert_eq!(param("motd", "hello = world"), Ok(()));
        assert!(param("", "x").is_err());
        assert!(param("a=b", "x").is_err());
        assert!(param("a", "x\ny").is_err());
    }
}
