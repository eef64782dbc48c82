//! Network specifications: `xl-network-configuration(5)`.
//!
//! A specification is a comma-separated series of `key=value` parameters
//! and flags, all optional: `mac=00:16:3e:74:3d:76,bridge=xenbr0`. The
//! empty string is a vif with every default. As xl does, unknown
//! parameters are ignored with a warning.

use std::fmt;
use std::str::FromStr;

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Xen's Organizationally Unique Identifier, `00:16:3e`.
pub const XEN_OUI: [u8; 3] = [0x00, 0x16, 0x3e];

impl MacAddr {
    /// A random address in Xen's OUI, as libxl picks one for a vif with no
    /// `mac=`: `00:16:3e` then three random bytes, the first with its top
    /// bit clear. `fill` fills its buffer with random bytes.
    pub fn random_xen(mut fill: impl FnMut(&mut [u8])) -> MacAddr {
        let mut random = [0u8; 3];
        fill(&mut random);
        MacAddr([
            XEN_OUI[0],
            XEN_OUI[1],
            XEN_OUI[2],
            random[0] & 0x7f,
            random[1],
            random[2],
        ])
    }

    /// The multicast bit is set: no address for a network card.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A string that is no MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid MAC address `{0}': expected six hex bytes separated by colons, like 00:16:3e:12:34:56"
)]
pub struct InvalidMac(pub String);

impl FromStr for MacAddr {
    type Err = InvalidMac;

    /// Six groups of one or two hex digits, separated by `:` (or, as xl
    /// also takes, by `-`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidMac(s.to_owned());
        let separator = if s.contains('-') { '-' } else { ':' };
        let mut mac = [0u8; 6];
        let mut groups = s.split(separator);
        for byte in &mut mac {
            let group = groups.next().ok_or_else(invalid)?;
            if group.is_empty() || group.len() > 2 || !group.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(invalid());
            }
            *byte = u8::from_str_radix(group, 16).map_err(|_| invalid())?;
        }
        if groups.next().is_some() {
            return Err(invalid());
        }
        Ok(MacAddr(mac))
    }
}

/// How the guest sees the interface (`type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicType {
    /// A paravirtual interface only.
    Vif,
    /// An emulated card as well (HVM guests only).
    Ioemu,
}

/// Which driver serves the interface (`backendtype=`, an rxl extension:
/// xl warns about it and ignores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VifBackendType {
    /// The project's rnetback (the default).
    Rnetback,
    /// Linux's in-kernel netback.
    Netback,
}

/// A transmit rate limit (`rate=RATE[@INTERVAL]`): the backend gives the
/// guest `bytes_per_interval` bytes of credit every `interval_usecs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Bytes of credit per interval.
    pub bytes_per_interval: u64,
    /// The replenishment interval, in microseconds (50 ms by default).
    pub interval_usecs: u32,
}

/// Why a `rate=` cannot be used (libxlu's messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RateProblem {
    /// Nothing before `@`.
    #[error("no rate specified")]
    NoRate,
    /// The rate is not `N[GMK]B/s` or `N[GMK]b/s`.
    #[error("invalid rate")]
    InvalidRate,
    /// The rate is 0 or too large.
    #[error("rate overflow")]
    RateOverflow,
    /// The interval is not `N`, `Ns`, `Nms` or `Nus`.
    #[error("invalid replenishment interval")]
    InvalidInterval,
    /// The interval is 0 or too large.
    #[error("replenishment interval overflow")]
    IntervalOverflow,
}

/// A `rate=` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem} in `{text}'")]
pub struct InvalidRate {
    /// The part of the rate at fault.
    pub text: String,
    /// What is wrong.
    pub problem: RateProblem,
}

impl FromStr for Rate {
    type Err = InvalidRate;

    /// `RATE[@INTERVAL]`: RATE is digits, an optional `G`, `M` or `K`
    /// (powers of 1000) and `B/s` (bytes) or `b/s` (bits); INTERVAL is
    /// digits and an optional `s`, `ms` or `us` (seconds if none).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |text: &str, problem| InvalidRate {
            text: text.to_owned(),
            problem,
        };
        let (rate, interval) = match s.split_once('@') {
            Some((rate, interval)) => (rate, Some(interval)),
            None => (s, None),
        };
        if rate.is_empty() {
            return Err(fail(s, RateProblem::NoRate));
        }

        let digits = rate.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = rate.split_at(digits);
        let (multiplier, unit) = match unit.as_bytes().first() {
            Some(b'G') => (1_000_000_000, &unit[1..]),
            Some(b'M') => (1_000_000, &unit[1..]),
            Some(b'K') => (1_000, &unit[1..]),
            _ => (1, unit),
        };
        let divisor = match unit {
            "B/s" => 1,
            "b/s" => 8,
            _ => return Err(fail(rate, RateProblem::InvalidRate)),
        };
        if number.is_empty() {
            return Err(fail(rate, RateProblem::InvalidRate));
        }
        let bytes_per_sec = number
            .parse::<u64>()
            .ok()
            .filter(|&n| n != 0 && n <= u64::from(u32::MAX))
            .ok_or_else(|| fail(rate, RateProblem::RateOverflow))?
            * multiplier
            / divisor;

        let interval_usecs = match interval {
            None => 50_000,
            Some(text) => {
                let digits = text.bytes().take_while(u8::is_ascii_digit).count();
                let (number, unit) = text.split_at(digits);
                let multiplier = match unit {
                    "" | "s" => 1_000_000,
                    "m" | "ms" => 1_000,
                    "u" | "us" => 1,
                    _ => return Err(fail(text, RateProblem::InvalidInterval)),
                };
                if number.is_empty() {
                    return Err(fail(text, RateProblem::InvalidInterval));
                }
                number
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n != 0 && n <= u64::from(u32::MAX))
                    .and_then(|n| u32::try_from(n * multiplier).ok())
                    .ok_or_else(|| fail(text, RateProblem::IntervalOverflow))?
            }
        };

        let bytes_per_interval = bytes_per_sec
            .checked_mul(u64::from(interval_usecs))
            .ok_or_else(|| fail(s, RateProblem::RateOverflow))?
            / 1_000_000;
        Ok(Rate {
            bytes_per_interval,
            interval_usecs,
        })
    }
}

/// A network interface: one item of `vif = [ ... ]`.
///
/// Absent parameters are `None`; the toolstack's defaults (bridge
/// `xenbr0`, script `vif-bridge`, a random MAC in Xen's OUI, MTU 1500,
/// trusted) apply to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VifSpec {
    /// `mac=`.
    pub mac: Option<MacAddr>,
    /// `bridge=`.
    pub bridge: Option<String>,
    /// `ip=`: the guest's address(es), for the hotplug script.
    pub ip: Option<String>,
    /// `type=`.
    pub nic_type: Option<NicType>,
    /// `model=`: the emulated card (HVM only).
    pub model: Option<String>,
    /// `vifname=`: the backend interface's name.
    pub vifname: Option<String>,
    /// `script=`: the hotplug script.
    pub script: Option<String>,
    /// `backend=`: the backend domain's name.
    pub backend_domain: Option<String>,
    /// `rate=`.
    pub rate: Option<Rate>,
    /// `mtu=`.
    pub mtu: Option<u32>,
    /// `gatewaydev=` (or the deprecated `netdev=`), for `vif-route`.
    pub gatewaydev: Option<String>,
    /// `trusted` / `untrusted`.
    pub trusted: Option<bool>,
    /// `backendtype=`.
    pub backend_type: Option<VifBackendType>,
    /// `devid=`; in a [`DomainConfig`](super::DomainConfig), the vif's
    /// index in the list when not given.
    pub devid: Option<u32>,
}

/// What is wrong with a network specification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VifProblem {
    /// `type=` is not `vif` or `ioemu`.
    #[error("invalid parameter `type': expected `vif' or `ioemu', found `{0}'")]
    InvalidType(String),
    /// `mac=` is no MAC address.
    #[error(transparent)]
    InvalidMac(#[from] InvalidMac),
    /// `rate=` cannot be used.
    #[error("invalid parameter `rate': {0}")]
    InvalidRate(#[from] InvalidRate),
    /// `mtu=` or `devid=` is not a number.
    #[error("invalid parameter `{key}': `{value}' is not a number")]
    InvalidNumber {
        /// The parameter.
        key: &'static str,
        /// Its value.
        value: String,
    },
    /// `backendtype=` names no backend rxl has.
    #[error("invalid parameter `backendtype': expected `rnetback' (the default) or `netback' (the kernel's), found `{0}'")]
    InvalidBackendType(String),
    /// A COLO parameter: xl knows them, rxl does not implement COLO.
    #[error("COLO parameter `{0}' is not supported by rxl")]
    Unsupported(String),
}

/// A network specification that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid vif specification `{spec}': {problem}")]
pub struct VifError {
    /// The specification.
    pub spec: String,
    /// What is wrong.
    pub problem: VifProblem,
}

/// Something in a network specification that was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VifWarning {
    /// A parameter xl does not know (xl: "unrecognized argument").
    #[error("unrecognized argument `{0}' ignored")]
    Unrecognized(String),
    /// `accel=`.
    #[error("the accel parameter for vifs is currently not supported")]
    Accel,
    /// `netdev=`, taken as `gatewaydev=`.
    #[error("the netdev parameter is deprecated, please use gatewaydev instead")]
    Netdev,
}

/// Parameters of xl's COLO network proxies.
fn is_colo_key(key: &str) -> bool {
    key == "forwarddev" || key.starts_with("colo_")
}

/// Digits only, as a number.
fn number(key: &'static str, value: &str) -> Result<u32, VifProblem> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = value.parse() {
            return Ok(n);
        }
    }
    Err(VifProblem::InvalidNumber {
        key,
        value: value.to_owned(),
    })
}

impl VifSpec {
    /// Parses one network specification. Parameters are separated by
    /// commas; blanks around them are dropped; a parameter given twice
    /// keeps its last value. Unknown parameters come back as warnings.
    pub fn parse(spec: &str) -> Result<(VifSpec, Vec<VifWarning>), VifError> {
        let mut vif = VifSpec::default();
        let mut warnings = Vec::new();
        for token in spec.split(',').map(|t| t.trim_matches([' ', '\t'])) {
            if token.is_empty() {
                continue;
            }
            vif.apply(token, &mut warnings)
                .map_err(|problem| VifError {
                    spec: spec.to_owned(),
                    problem,
                })?;
        }
        Ok((vif, warnings))
    }

    fn apply(&mut self, token: &str, warnings: &mut Vec<VifWarning>) -> Result<(), VifProblem> {
        let Some((key, value)) = token.split_once('=') else {
            match token {
                "trusted" => self.trusted = Some(true),
                "untrusted" => self.trusted = Some(false),
                _ => warnings.push(VifWarning::Unrecognized(token.to_owned())),
            }
            return Ok(());
        };
        let text = || Some(value.to_owned());
        match key {
            "type" => {
                self.nic_type = Some(match value {
                    "vif" => NicType::Vif,
                    "ioemu" => NicType::Ioemu,
                    _ => return Err(VifProblem::InvalidType(value.to_owned())),
                })
            }
            "mac" => self.mac = Some(value.parse()?),
            "bridge" => self.bridge = text(),
            "netdev" => {
                warnings.push(VifWarning::Netdev);
                self.gatewaydev = text();
            }
            "gatewaydev" => self.gatewaydev = text(),
            "ip" => self.ip = text(),
            "script" => self.script = text(),
            "backend" => self.backend_domain = text(),
            "backendtype" => {
                self.backend_type = Some(match value {
                    "rnetback" => VifBackendType::Rnetback,
                    "netback" => VifBackendType::Netback,
                    _ => return Err(VifProblem::InvalidBackendType(value.to_owned())),
                })
            }
            "vifname" => self.vifname = text(),
            "model" => self.model = text(),
            "rate" => self.rate = Some(value.parse()?),
            "accel" => warnings.push(VifWarning::Accel),
            "devid" => self.devid = Some(number("devid", value)?),
            "mtu" => self.mtu = Some(number("mtu", value)?),
            _ if is_colo_key(key) => return Err(VifProblem::Unsupported(key.to_owned())),
            _ => warnings.push(VifWarning::Unrecognized(token.to_owned())),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vif(spec: &str) -> VifSpec {
        let (vif, warnings) = VifSpec::parse(spec).unwrap_or_else(|e| panic!("{e}"));
        assert!(warnings.is_empty(), "{spec}: {warnings:?}");
        vif
    }

    fn error(spec: &str) -> String {
        VifSpec::parse(spec).unwrap_err().to_string()
    }

    fn rate(text: &str) -> (u64, u32) {
        let r: Rate = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        (r.bytes_per_interval, r.interval_usecs)
    }

    #[test]
    fn the_manuals_examples() {
        let v = vif("mac=00:16:3E:74:3d:76,model=rtl8139,bridge=xenbr0");
        assert_eq!(v.mac, Some(MacAddr([0x00, 0x16, 0x3e, 0x74, 0x3d, 0x76])));
        assert_eq!(v.model.as_deref(), Some("rtl8139"));
        assert_eq!(v.bridge.as_deref(), Some("xenbr0"));

        assert_eq!(
            vif("mac=00:16:3E:74:34:32")
                .mac
                .map(|m| m.to_string())
                .as_deref(),
            Some("00:16:3e:74:34:32")
        );
        assert_eq!(vif(""), VifSpec::default());
    }

    #[test]
    fn every_parameter() {
        let v = vif(
            "mac=00:16:3e:00:00:01, bridge=br1, ip=192.0.2.10 192.0.2.11, type=vif, model=e1000, \
             vifname=web0, script=vif-route, backend=netdom, rate=10Mb/s@20ms, mtu=9000, \
             gatewaydev=eth1, untrusted, devid=3",
        );

        assert_eq!(v.mac, Some(MacAddr([0, 0x16, 0x3e, 0, 0, 1])));
        assert_eq!(v.bridge.as_deref(), Some("br1"));
        assert_eq!(v.ip.as_deref(), Some("192.0.2.10 192.0.2.11"));
        assert_eq!(v.nic_type, Some(NicType::Vif));
        assert_eq!(v.model.as_deref(), Some("e1000"));
        assert_eq!(v.vifname.as_deref(), Some("web0"));
        assert_eq!(v.script.as_deref(), Some("vif-route"));
        assert_eq!(v.backend_domain.as_deref(), Some("netdom"));
        assert_eq!(
            v.rate,
            Some(Rate {
                bytes_per_interval: 25_000,
                interval_usecs: 20_000
            })
        );
        assert_eq!(v.mtu, Some(9000));
        assert_eq!(v.gatewaydev.as_deref(), Some("eth1"));
        assert_eq!(v.trusted, Some(false));
        assert_eq!(v.devid, Some(3));
        assert_eq!(vif("trusted").trusted, Some(true));
        assert_eq!(vif("type=ioemu").nic_type, Some(NicType::Ioemu));
    }

    #[test]
    fn blanks_and_empty_parameters_are_dropped_and_repeats_keep_the_last() {
        // xen-tools writes `ip=ADDR ,mac=...`.
        let v = vif(" ip=192.0.2.1 ,,mac=00:16:3e:d5:41:7c, ,bridge=a,bridge=b,");

        assert_eq!(v.ip.as_deref(), Some("192.0.2.1"));
        assert_eq!(v.bridge.as_deref(), Some("b"));
        assert!(v.mac.is_some());
    }

    #[test]
    fn unknown_parameters_are_warnings() {
        let (v, warnings) =
            VifSpec::parse("bridge=br0,foo=bar,trusted=1,accel=x,netdev=eth0,frob").unwrap();

        assert_eq!(v.bridge.as_deref(), Some("br0"));
        assert_eq!(v.gatewaydev.as_deref(), Some("eth0"));
        assert_eq!(
            warnings,
            [
                VifWarning::Unrecognized("foo=bar".into()),
                VifWarning::Unrecognized("trusted=1".into()),
                VifWarning::Accel,
                VifWarning::Netdev,
                VifWarning::Unrecognized("frob".into()),
            ]
        );
        assert_eq!(
            warnings[0].to_string(),
            "unrecognized argument `foo=bar' ignored"
        );
    }

    #[test]
    fn invalid_values_are_errors_naming_the_spec() {
        assert_eq!(
            error("mac=00:16:3e:zz:00:01,bridge=br0"),
            "invalid vif specification `mac=00:16:3e:zz:00:01,bridge=br0': invalid MAC address \
             `00:16:3e:zz:00:01': expected six hex bytes separated by colons, like 00:16:3e:12:34:56"
        );
        assert_eq!(
            error("type=virtio"),
            "invalid vif specification `type=virtio': invalid parameter `type': expected `vif' or `ioemu', found `virtio'"
        );
        assert_eq!(
            error("backendtype=qemu"),
            "invalid vif specification `backendtype=qemu': invalid parameter `backendtype': expected \
             `rnetback' (the default) or `netback' (the kernel's), found `qemu'"
        );
        assert_eq!(vif("bridge=xenbr1,backendtype=netback").backend_type, Some(VifBackendType::Netback));
        assert_eq!(vif("backendtype=rnetback").backend_type, Some(VifBackendType::Rnetback));
        assert_eq!(vif("bridge=xenbr1").backend_type, None);
        assert_eq!(
            error("mtu=15oo"),
            "invalid vif specification `mtu=15oo': invalid parameter `mtu': `15oo' is not a number"
        );
        assert!(error("devid=-1").contains("invalid parameter `devid'"));
        assert!(error("mtu=99999999999").contains("is not a number"));
        assert_eq!(
            error("rate=10Mbit"),
            "invalid vif specification `rate=10Mbit': invalid parameter `rate': invalid rate in `10Mbit'"
        );
        assert_eq!(
            error("colo_sock_mirror_id=1"),
            "invalid vif specification `colo_sock_mirror_id=1': COLO parameter `colo_sock_mirror_id' is not supported by rxl"
        );
        assert!(error("forwarddev=eth0").contains("COLO"));
    }

    #[test]
    fn mac_addresses() {
        assert_eq!(
            "00:16:3e:0:a:1".parse(),
            Ok(MacAddr([0, 0x16, 0x3e, 0, 0xa, 1]))
        );
        assert_eq!(
            "aa-bb-cc-dd-ee-ff".parse(),
            Ok(MacAddr([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]))
        );
        for bad in [
            "",
            "00:16:3e:00:00",
            "00:16:3e:00:00:01:02",
            "00:16:3e:00:00:001",
            "00:16:3e:00::01",
            "00:16:3e:00:00:0g",
            "0016.3e00.0001",
            "00:16:3e-00:00:01",
            " 00:16:3e:00:00:01",
        ] {
            assert_eq!(
                bad.parse::<MacAddr>(),
                Err(InvalidMac(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(
            MacAddr([0xde, 0xad, 0xbe, 0xef, 0, 1]).to_string(),
            "de:ad:be:ef:00:01"
        );
        assert!(MacAddr([1, 0, 0, 0, 0, 0]).is_multicast());
        assert!(!MacAddr([0, 0x16, 0x3e, 0, 0, 0]).is_multicast());
    }

    #[test]
    fn random_macs_are_in_xens_oui() {
        let mac = MacAddr::random_xen(|buf| buf.fill(0xff));
        assert_eq!(mac, MacAddr([0x00, 0x16, 0x3e, 0x7f, 0xff, 0xff]));

        let mut counter = 0u8;
        let mac = MacAddr::random_xen(|buf| {
            for b in buf.iter_mut() {
                counter += 0x41;
                *b = counter;
            }
        });
        assert_eq!(mac.to_string(), "00:16:3e:41:82:c3");
        assert!(!mac.is_multicast());
    }

    #[test]
    fn rates() {
        // 10 Mbit/s for 50 ms.
        assert_eq!(rate("10Mb/s"), (62_500, 50_000));
        assert_eq!(rate("250KB/s"), (12_500, 50_000));
        // The manual: 20,000 bytes every 20,000 us.
        assert_eq!(rate("1MB/s@20ms"), (20_000, 20_000));
        assert_eq!(rate("1GB/s@1s"), (1_000_000_000, 1_000_000));
        assert_eq!(rate("1GB/s@2"), (2_000_000_000, 2_000_000));
        assert_eq!(rate("8000000b/s@100us"), (100, 100));
        assert_eq!(rate("800000B/s@100u"), (80, 100));
        // Credit below one byte per interval rounds down, as in libxlu.
        assert_eq!(rate("800b/s@100us"), (0, 100));
        assert_eq!(rate("1000B/s@5m"), (5, 5_000));
        assert_eq!(rate("4294967295B/s@1us"), (4294, 1));
    }

    #[test]
    fn invalid_rates() {
        let problem = |text: &str| text.parse::<Rate>().unwrap_err().problem;
        assert_eq!(problem(""), RateProblem::NoRate);
        assert_eq!(problem("@20ms"), RateProblem::NoRate);
        for bad in [
            "10", "10M", "10mb/s", "10MB", "10 MB/s", "MB/s", "10TB/s", "1.5MB/s", "-1MB/s",
        ] {
            assert_eq!(problem(bad), RateProblem::InvalidRate, "{bad}");
        }
        assert_eq!(problem("0MB/s"), RateProblem::RateOverflow);
        assert_eq!(problem("4294967296B/s"), RateProblem::RateOverflow);
        for bad in [
            "1MB/s@",
            "1MB/s@ms",
            "1MB/s@20ns",
            "1MB/s@20 ms",
            "1MB/s@1h",
        ] {
            assert_eq!(problem(bad), RateProblem::InvalidInterval, "{bad}");
        }
        assert_eq!(problem("1MB/s@0ms"), RateProblem::IntervalOverflow);
        assert_eq!(problem("1MB/s@4295s"), RateProblem::IntervalOverflow);
        assert_eq!(
            problem("4294967295GB/s@4294967295us"),
            RateProblem::RateOverflow
        );
        assert_eq!(
            "1MB/s@0ms".parse::<Rate>().unwrap_err().to_string(),
            "replenishment interval overflow in `0ms'"
        );
    }

    #[test]
    fn arbitrary_specifications_never_panic() {
        let alphabet = [
            "mac=", "rate=", "@", ",", "=", ":", "0", "9", "f", "M", "B/s", "b/s", "ms", " ",
            "mtu=", "devid=", "type=", "vif", "ü", "colo_", "trusted",
        ];
        for spec in crate::config::file::tests::pseudo_random_texts(&alphabet, 20_000, 3) {
            let _ = VifSpec::parse(&spec);
        }
    }
}
