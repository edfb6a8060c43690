//! Which pre-downgrade backups an `upgrade --restore` puts back, and after which steps.
//!
//! Each backed-up downgrade went from one revision to a lower one. Re-applying from the
//! lower revision, its backup belongs right after the steps that bring the schema back to
//! where the downgrade started, so the tables and columns exist again. Pure: the candidates
//! come from the ledger (or, for an explicit backup id, its manifest).

use crate::error::usage;

/// A backed-up downgrade that may be restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub backup_id: String,
    /// The revision the downgrade started from (what the backup's data fits).
    pub from: Option<String>,
    /// The revision the downgrade went to.
    pub to: Option<String>,
}

/// A run of up steps, then (optionally) one backup loaded in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Indices into the plan's steps, `first..=last`.
    pub first: usize,
    pub last: usize,
    pub backup: Option<Candidate>,
}

/// Splits `steps` (revisions, in order, starting above `from`) into stages, each ending with
/// the backup of the downgrade that left from there. `open` are the backups not restored
/// yet, newest first; `explicit` is a backup the user named, which must belong at `from`.
pub fn stages(
    steps: &[String],
    from: Option<&str>,
    open: &[Candidate],
    explicit: Option<&Candidate>,
) -> anyhow::Result<Vec<Stage>> {
    let mut current = from.map(str::to_string);
    let mut used: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    let mut i = 0;
    while i < steps.len() {
        let chosen = match explicit.filter(|_| i == 0) {
            Some(c) => Some(c),
            None => open
                .iter()
                .find(|c| c.to == current && !used.contains(&c.backup_id.as_str())),
        };
        if let Some(c) = chosen.filter(|_| i == 0) {
            if c.to != current {
                return usage(format!(
                    "backup {} was taken when downgrading to {}, but the database is at {}; pick the backup of that downgrade",
                    c.backup_id,
                    c.to.as_deref().unwrap_or("(none)"),
                    current.as_deref().unwrap_or("(none)")
                ));
            }
        }
        let last = match chosen.and_then(|c| c.from.as_ref()) {
            Some(rev) => match steps.iter().position(|s| s == rev) {
                Some(p) => p.max(i),
                None => {
                    let c = chosen.expect("matched above");
                    return usage(format!(
                        "backup {} holds data of revision {rev}, but this upgrade stops at {}; upgrade to {rev} (or head) with --restore, or without --restore to leave that data out",
                        c.backup_id,
                        steps.last().map_or("(none)", |s| s.as_str())
                    ));
                }
            },
            None => i,
        };
        if let Some(c) = chosen {
            used.push(&c.backup_id);
        }
        out.push(Stage {
            first: i,
            last,
            backup: chosen.cloned(),
        });
        current = Some(steps[last].clone());
        i = last + 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{kind_of, Kind};

    fn c(id: &str, from: Option<&str>, to: Option<&str>) -> Candidate {
        Candidate {
            backup_id: id.into(),
            from: from.map(Into::into),
            to: to.map(Into::into),
        }
    }

    fn revs(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    /// (first, last, backup id) per stage.
    fn shape(stages: &[Stage]) -> Vec<(usize, usize, Option<&str>)> {
        stages
            .iter()
            .map(|s| {
                (
                    s.first,
                    s.last,
                    s.backup.as_ref().map(|b| b.backup_id.as_str()),
                )
            })
            .collect()
    }

    #[test]
    fn stages_follow_the_downgrades_taken() {
        let steps = revs(&["1_a", "2_b", "3_c"]);
        type Shape<'a> = Vec<(usize, usize, Option<&'a str>)>;
        let cases: Vec<(&str, Option<&str>, Vec<Candidate>, Shape)> = vec![
            (
                "one downgrade base -> 3 at once: everything, then its backup",
                None,
                vec![c("x", Some("3_c"), None)],
                vec![(0, 2, Some("x"))],
            ),
            (
                "step by step: each backup after its own step",
                None,
                vec![
                    c("x1", Some("1_a"), None),
                    c("x2", Some("2_b"), Some("1_a")),
                    c("x3", Some("3_c"), Some("2_b")),
                ],
                vec![(0, 0, Some("x1")), (1, 1, Some("x2")), (2, 2, Some("x3"))],
            ),
            (
                "a step whose downgrade destroyed nothing has no backup",
                None,
                vec![
                    c("x1", Some("1_a"), None),
                    c("x3", Some("3_c"), Some("2_b")),
                ],
                vec![(0, 0, Some("x1")), (1, 1, None), (2, 2, Some("x3"))],
            ),
            (
                "the newest of two downgrades to the same revision wins",
                None,
                vec![c("new", Some("1_a"), None), c("old", Some("1_a"), None)],
                vec![(0, 0, Some("new")), (1, 1, None), (2, 2, None)],
            ),
        ];
        for (what, from, open, want) in cases {
            let got = stages(&steps, from, &open, None).unwrap();
            assert_eq!(shape(&got), want, "{what}");
        }
    }

    #[test]
    fn nothing_saved_wrong_backups_and_short_upgrades() {
        let steps = revs(&["2_b"]);
        // No downgrade to 1_a saved anything: the upgrade runs, restoring nothing.
        let got = stages(&steps, Some("1_a"), &[c("x", Some("2_b"), None)], None).unwrap();
        assert_eq!(shape(&got), vec![(0, 0, None)]);
        let wrong = c("y", Some("3_c"), Some("2_b"));
        let e = stages(&steps, Some("1_a"), &[], Some(&wrong)).unwrap_err();
        assert!(
            e.to_string()
                .contains("backup y was taken when downgrading to 2_b"),
            "{e}"
        );
        let right = c("z", Some("2_b"), Some("1_a"));
        let got = stages(&steps, Some("1_a"), &[], Some(&right)).unwrap();
        assert_eq!(shape(&got), vec![(0, 0, Some("z"))]);
        // The backup belongs at 3_c, but the upgrade stops at 2_b.
        let high = c("h", Some("3_c"), Some("1_a"));
        let e = stages(&steps, Some("1_a"), &[high], None).unwrap_err();
        assert_eq!(kind_of(&e), Kind::Usage);
        assert!(
            e.to_string()
                .contains("holds data of revision 3_c, but this upgrade stops at 2_b"),
            "{e}"
        );
    }
}
