//! Where `upgrade` and `downgrade` should go, parsed from what the user typed.

use crate::error::usage;

/// Where `upgrade` should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpTarget {
    Head,
    Relative(usize),
    Revision(String),
}

/// Where `downgrade` should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownTarget {
    Relative(usize),
    Base,
    Revision(String),
}

impl std::str::FromStr for UpTarget {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        if s == "head" {
            return Ok(UpTarget::Head);
        }
        if let Some(n) = s.strip_prefix('+') {
            return match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(UpTarget::Relative(n)),
                _ => usage(format!(
                    "upgrade target {s:?} is not head, +N (N ≥ 1) or a revision"
                )),
            };
        }
        Ok(UpTarget::Revision(s.to_string()))
    }
}

impl std::str::FromStr for DownTarget {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        if s == "base" {
            return Ok(DownTarget::Base);
        }
        if let Some(n) = s.strip_prefix('-') {
            return match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(DownTarget::Relative(n)),
                _ => usage(format!(
                    "downgrade target {s:?} is not -N (N ≥ 1), base or a revision"
                )),
            };
        }
        Ok(DownTarget::Revision(s.to_string()))
    }
}

/// Either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Up(UpTarget),
    Down(DownTarget),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let ups: &[(&str, Option<UpTarget>)] = &[
            ("head", Some(UpTarget::Head)),
            ("+2", Some(UpTarget::Relative(2))),
            ("+0", None),
            ("+x", None),
            (
                "001_initial",
                Some(UpTarget::Revision("001_initial".into())),
            ),
        ];
        for (text, want) in ups {
            assert_eq!(text.parse::<UpTarget>().ok(), *want, "{text}");
        }
        let downs: &[(&str, Option<DownTarget>)] = &[
            ("-1", Some(DownTarget::Relative(1))),
            ("base", Some(DownTarget::Base)),
            ("-0", None),
            ("-x", None),
            (
                "001_initial",
                Some(DownTarget::Revision("001_initial".into())),
            ),
        ];
        for (text, want) in downs {
            assert_eq!(text.parse::<DownTarget>().ok(), *want, "{text}");
        }
        let e = "+0".parse::<UpTarget>().unwrap_err();
        assert_eq!(crate::error::kind_of(&e), crate::error::Kind::Usage);
    }
}
