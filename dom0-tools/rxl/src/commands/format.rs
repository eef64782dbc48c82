//! The small pieces of C behaviour xl's output and argument handling rest
//! on: `printf` padding by bytes, `strtoul`/`atoi` prefix parsing, xl's
//! memory sizes, CPU bitmaps, uptimes, and libxl's (yajl's) JSON layout.

use serde_json::Value;

use crate::host::CpuMap;

/// `%-Ns`: `s` left-aligned in `width` bytes (C pads by bytes, not chars).
pub(crate) fn ljust(s: &str, width: usize) -> String {
    let mut out = String::with_capacity(width.max(s.len()));
    out.push_str(s);
    out.push_str(&" ".repeat(width.saturating_sub(s.len())));
    out
}

/// `%Ns`: `s` right-aligned in `width` bytes.
pub(crate) fn rjust(s: &str, width: usize) -> String {
    let mut out = " ".repeat(width.saturating_sub(s.len()));
    out.push_str(s);
    out
}

/// What glibc prints for a `%s` given `NULL`.
pub(crate) const C_NULL: &str = "(null)";

/// Seconds as xl computes them for display: `(float)ns / 1e9`, i.e. the
/// nanoseconds rounded to single precision first.
pub(crate) fn cpu_seconds(ns: u64) -> f64 {
    f64::from(ns as f32) / 1e9
}

/// A decimal prefix as `strtol`/`strtoul` read it: leading white space, an
/// optional sign, then digits. `None` when there are no digits (the C
/// functions then leave `endptr` at the start of the string).
struct CNumber<'a> {
    negative: bool,
    /// The digits' value, saturated at `u64::MAX`.
    magnitude: u64,
    rest: &'a str,
}

fn c_number(s: &str) -> Option<CNumber<'_>> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let magnitude = t[..digits].bytes().fold(0u64, |acc, d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    Some(CNumber {
        negative,
        magnitude,
        rest: &t[digits..],
    })
}

/// `strtoul(s, &end, 10)` where the caller only checks that some digits
/// were read: the value of the leading number, negative numbers wrapping
/// as in C. `None` when `s` does not start with a number.
pub(crate) fn strtoul_prefix(s: &str) -> Option<u64> {
    let n = c_number(s)?;
    Some(if n.negative {
        n.magnitude.wrapping_neg()
    } else {
        n.magnitude
    })
}

/// `strtol(s, &end, 10)`: the leading number (saturating) and whether any
/// digits were read.
pub(crate) fn strtol_prefix(s: &str) -> (i64, bool) {
    match c_number(s) {
        None => (0, false),
        Some(n) => {
            let v = i64::try_from(n.magnitude).unwrap_or(i64::MAX);
            (if n.negative { -v } else { v }, true)
        }
    }
}

/// `atoi(s)`: the leading number, or 0.
pub(crate) fn atoi(s: &str) -> i64 {
    strtol_prefix(s).0
}

/// xl's `parse_mem_size_kb`: a number with an optional one-letter unit
/// (`b`, `k`, `m` (the default), `g`, `t`, any case), in KiB. `None` where
/// xl returns -1 (invalid); like xl, a lone unit letter counts as 0.
pub(crate) fn parse_mem_size_kb(s: &str) -> Option<i64> {
    let (value, rest) = match c_number(s) {
        Some(n) => {
            let v = i64::try_from(n.magnitude).unwrap_or(i64::MAX);
            (if n.negative { -v } else { v }, n.rest)
        }
        None => (0, s),
    };
    if rest.len() > 1 {
        return None;
    }
    let kb = match rest.bytes().next().map(|c| c.to_ascii_lowercase()) {
        Some(b't') => value.checked_mul(1 << 30)?,
        Some(b'g') => value.checked_mul(1 << 20)?,
        None | Some(b'm') => value.checked_mul(1 << 10)?,
        Some(b'k') => value,
        Some(b'b') => value >> 10,
        Some(_) => return None,
    };
    (kb != -1).then_some(kb)
}

/// A CPU (or node) set the way xl prints it (`print_bitmap`) over the first
/// `len` bits: `all` when every bit is set, `none` when none is, otherwise
/// comma-separated ranges such as `0-3,6`.
pub(crate) fn bitmap(map: &CpuMap, len: u32) -> String {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    let mut start = None;
    for i in 0..len {
        match (map.is_set(i), start) {
            (true, None) => start = Some(i),
            (false, Some(first)) => {
                ranges.push((first, i - 1));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(first) = start {
        if ranges.is_empty() && first == 0 {
            return "all".to_owned();
        }
        ranges.push((first, len - 1));
    }
    if ranges.is_empty() {
        return "none".to_owned();
    }
    ranges
        .iter()
        .map(|&(a, b)| {
            if b > a {
                format!("{a}-{b}")
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// An uptime as `xl uptime` prints it: `[D day(s), ]HH:MM[:SS]`, the hour
/// space-padded to two characters; `short` drops the seconds.
pub(crate) fn uptime_string(secs: u64, short: bool) -> String {
    let days = secs / 86_400;
    let hours = secs % 86_400 / 3600;
    let mins = secs % 3600 / 60;
    let s = secs % 60;
    let clock = if short {
        format!("{hours:2}:{mins:02}")
    } else {
        format!("{hours:2}:{mins:02}:{s:02}")
    };
    match days {
        0 => clock,
        1 => format!("1 day, {clock}"),
        d => format!("{d} days, {clock}"),
    }
}

/// `value` laid out as libxl's JSON generator (yajl 2 with `beautify`)
/// does: four-space indents, `"key": value`, empty containers on two
/// lines, and a final newline.
pub(crate) fn libxl_json(value: &Value) -> String {
    let mut out = String::new();
    write_json(value, 0, &mut out);
    out.push('\n');
    out
}

fn indent(depth: usize, out: &mut String) {
    for _ in 0..depth {
        out.push_str("    ");
    }
}

fn write_json(value: &Value, depth: usize, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(",\n");
                }
                indent(depth + 1, out);
                write_json(item, depth + 1, out);
            }
            out.push('\n');
            indent(depth, out);
            out.push(']');
        }
        Value::Object(map) => {
            out.push_str("{\n");
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(",\n");
                }
                indent(depth + 1, out);
                write_string(key, out);
                out.push_str(": ");
                write_json(item, depth + 1, out);
            }
            out.push('\n');
            indent(depth, out);
            out.push('}');
        }
    }
}

/// Integers as `%lld`; doubles keep a `.0` when integral, as yajl does
/// (libxl's configuration has no doubles, so their exact `%.20g` digits
/// are not reproduced).
fn write_number(n: &serde_json::Number, out: &mut String) {
    let text = n.to_string();
    let integral = text.bytes().all(|b| b.is_ascii_digit() || b == b'-');
    out.push_str(&text);
    if n.is_f64() && integral {
        out.push_str(".0");
    }
}

/// yajl's string escapes: `\" \\ \b \f \n \r \t`, other control
/// characters as `\u00XX` (upper-case hex), `/` and non-ASCII left as is.
fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pads_like_printf() {
        assert_eq!(ljust("ab", 4), "ab  ");
        assert_eq!(rjust("ab", 4), "  ab");
        assert_eq!(ljust("abcdef", 4), "abcdef");
    }

    #[test]
    fn mem_sizes_follow_xl() {
        assert_eq!(parse_mem_size_kb("512"), Some(512 * 1024));
        assert_eq!(parse_mem_size_kb("512m"), Some(512 * 1024));
        assert_eq!(parse_mem_size_kb("512M"), Some(512 * 1024));
        assert_eq!(parse_mem_size_kb("2g"), Some(2 * 1024 * 1024));
        assert_eq!(parse_mem_size_kb("1t"), Some(1024 * 1024 * 1024));
        assert_eq!(parse_mem_size_kb("4096k"), Some(4096));
        assert_eq!(parse_mem_size_kb("1048576b"), Some(1024));
        assert_eq!(parse_mem_size_kb("m"), Some(0));
        assert_eq!(parse_mem_size_kb("512mb"), None);
        assert_eq!(parse_mem_size_kb("512x"), None);
        assert_eq!(parse_mem_size_kb("lots"), None);
        assert_eq!(parse_mem_size_kb("-1k"), None);
        assert_eq!(parse_mem_size_kb("99999999999999t"), None);
    }

    #[test]
    fn c_prefix_parsing() {
        assert_eq!(strtoul_prefix("4"), Some(4));
        assert_eq!(strtoul_prefix(" 4abc"), Some(4));
        assert_eq!(strtoul_prefix("abc"), None);
        assert_eq!(strtoul_prefix("-1"), Some(u64::MAX));
        assert_eq!(strtol_prefix("12x"), (12, true));
        assert_eq!(strtol_prefix("x"), (0, false));
        assert_eq!(atoi("7"), 7);
        assert_eq!(atoi("junk"), 0);
    }

    #[test]
    fn bitmaps_print_like_xl() {
        assert_eq!(bitmap(&CpuMap::first(8), 8), "all");
        assert_eq!(bitmap(&CpuMap::first(64), 8), "all");
        assert_eq!(bitmap(&CpuMap::new(), 8), "none");
        assert_eq!(bitmap(&CpuMap::from_cpus([0, 1, 2, 5]), 8), "0-2,5");
        assert_eq!(bitmap(&CpuMap::from_cpus([3]), 8), "3");
        assert_eq!(bitmap(&CpuMap::from_cpus([1, 2, 3, 4, 5, 6, 7]), 8), "1-7");
        assert_eq!(bitmap(&CpuMap::from_cpus([0, 1, 6, 7]), 8), "0-1,6-7");
        assert_eq!(bitmap(&CpuMap::from_cpus([0, 1, 2]), 4), "0-2");
    }

    #[test]
    fn uptimes_print_like_xl() {
        assert_eq!(uptime_string(59, false), " 0:00:59");
        assert_eq!(uptime_string(3 * 3600 + 7 * 60 + 5, false), " 3:07:05");
        assert_eq!(uptime_string(86_400 + 3600, false), "1 day,  1:00:00");
        assert_eq!(
            uptime_string(3 * 86_400 + 12 * 3600 + 60, true),
            "3 days, 12:01"
        );
        assert_eq!(uptime_string(600, true), " 0:10");
    }

    #[test]
    fn cpu_seconds_round_through_single_precision() {
        assert_eq!(format!("{:.1}", cpu_seconds(250_000_000)), "0.2");
        // 2^24 + 1 ns is not a float: C's (float) cast rounds it down.
        assert_eq!(cpu_seconds(16_777_217), f64::from(16_777_216f32) / 1e9);
    }

    #[test]
    fn json_is_laid_out_like_yajl() {
        let value = json!([{"domid": 1, "config": {"c_info": {"name": "g\"1\n"}, "disks": [], "on": true, "x": null, "m": {}}}]);

        let text = libxl_json(&value);

        let expected = "[\n    {\n        \"domid\": 1,\n        \"config\": {\n            \"c_info\": {\n                \"name\": \"g\\\"1\\n\"\n            },\n            \"disks\": [\n\n            ],\n            \"on\": true,\n            \"x\": null,\n            \"m\": {\n\n            }\n        }\n    }\n]\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn json_escapes_control_characters_in_upper_case_hex() {
        assert_eq!(libxl_json(&json!("a\u{1b}/é")), "\"a\\u001B/é\"\n");
        assert_eq!(libxl_json(&json!(1.0)), "1.0\n");
    }
}
