//! How sizes and ages read on a terminal.

use backstop::backup::catalog::created;
use backstop::backup::manifest::Manifest;
use time::OffsetDateTime;

/// `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `3h`, `2d`: how long ago a manifest was written.
pub fn age(m: &Manifest, now: OffsetDateTime) -> String {
    let Some(t) = created(m) else {
        return "?".into();
    };
    let s = (now - t).whole_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Text read from a store (labels, names, types), safe to print on a terminal: control
/// characters (an escape sequence could rewrite the screen) are shown escaped.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A duration in seconds as people say it: `1 hour`, `90 minutes`, `45 seconds`.
pub fn seconds(secs: u64) -> String {
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match secs {
        s if s >= 3600 && s % 3600 == 0 => plural(s / 3600, "hour"),
        s if s >= 60 && s % 60 == 0 => plural(s / 60, "minute"),
        s => plural(s, "second"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_ages_read_naturally() {
        assert_eq!(
            printable("nightly \u{1b}[2Jwiped"),
            "nightly \\u{1b}[2Jwiped"
        );
        assert_eq!(printable("line\nbreak"), "line\\nbreak");
        assert_eq!(printable("café ✓"), "café ✓");
        assert_eq!(seconds(3600), "1 hour");
        assert_eq!(seconds(7200), "2 hours");
        assert_eq!(seconds(90), "90 seconds");
        assert_eq!(seconds(120), "2 minutes");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
