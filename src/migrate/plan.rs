//! The plan: which scripts run, in which order, from the current revision to a target.
//! Pure, so `--dry-run` prints exactly what execution follows and tests need no database.

use serde::Serialize;

use super::source::{Migration, MigrationSet, Script};
use super::status::Status;
use super::target::{DownTarget, Target, UpTarget};
use crate::error::usage;

/// Which way a plan goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Up,
    Down,
}

/// One script to run and the bookkeeping that goes with it.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub revision: String,
    pub checksum: String,
    #[serde(skip)]
    pub script: Script,
    /// The SQL, for `--dry-run`.
    pub sql: String,
    pub no_transaction: bool,
}

/// The ordered steps from the current revision to the target.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub direction: Direction,
    pub from: Option<String>,
    pub to: Option<String>,
    pub steps: Vec<PlannedStep>,
}

impl Plan {
    pub fn new(
        direction: Direction,
        from: Option<String>,
        to: Option<String>,
        migrations: &[&Migration],
    ) -> Plan {
        let steps = migrations
            .iter()
            .map(|m| {
                let script = match direction {
                    Direction::Up => m.up.clone(),
                    Direction::Down => m.down.clone(),
                };
                PlannedStep {
                    revision: m.revision.clone(),
                    checksum: m.checksum.clone(),
                    sql: script.sql.clone(),
                    no_transaction: script.no_transaction,
                    script,
                }
            })
            .collect();
        Plan {
            direction,
            from,
            to,
            steps,
        }
    }
}

/// Works out the steps from `status` to `target`.
pub fn plan(set: &MigrationSet, status: &Status, target: &Target) -> anyhow::Result<Plan> {
    let applied: Vec<&Migration> = status
        .applied()
        .filter_map(|e| set.get(&e.revision))
        .collect();
    let pending: Vec<&Migration> = set
        .migrations
        .iter()
        .filter(|m| !applied.iter().any(|a| a.revision == m.revision))
        .collect();
    let current = status.current.clone();
    match target {
        Target::Up(t) => {
            let steps: Vec<&Migration> = match t {
                UpTarget::Head => pending.clone(),
                UpTarget::Relative(n) => {
                    if *n > pending.len() {
                        return usage(format!(
                            "upgrade +{n} asks for {n} steps but only {} migration(s) are pending",
                            pending.len()
                        ));
                    }
                    pending[..*n].to_vec()
                }
                UpTarget::Revision(rev) => {
                    known(set, rev)?;
                    if applied.iter().any(|m| &m.revision == rev) {
                        if current.as_ref() == Some(rev) {
                            Vec::new()
                        } else {
                            return usage(format!(
                                "revision {rev} is already applied and below the current {}; use `downgrade {rev}` to go back",
                                current.as_deref().unwrap_or("(none)")
                            ));
                        }
                    } else {
                        let idx = pending.iter().position(|m| &m.revision == rev).unwrap_or(0);
                        pending[..=idx].to_vec()
                    }
                }
            };
            let to = steps.last().map(|m| m.revision.clone()).or(current.clone());
            Ok(Plan::new(Direction::Up, current, to, &steps))
        }
        Target::Down(t) => {
            let keep = match t {
                DownTarget::Base => 0,
                DownTarget::Relative(n) => {
                    if *n > applied.len() {
                        return usage(format!(
                            "downgrade -{n} asks for {n} steps but only {} migration(s) are applied",
                            applied.len()
                        ));
                    }
                    applied.len() - n
                }
                DownTarget::Revision(rev) => {
                    known(set, rev)?;
                    match applied.iter().position(|m| &m.revision == rev) {
                        Some(i) => i + 1,
                        None => {
                            return usage(format!(
                                "revision {rev} is not applied, so the database cannot be downgraded to it; `backstop history` shows what is applied"
                            ))
                        }
                    }
                }
            };
            let steps: Vec<&Migration> = applied[keep..].iter().rev().copied().collect();
            let to = keep.checked_sub(1).map(|i| applied[i].revision.clone());
            Ok(Plan::new(Direction::Down, current, to, &steps))
        }
    }
}

/// Fails with the list of known revisions unless `rev` is one of them.
pub fn known(set: &MigrationSet, rev: &str) -> anyhow::Result<()> {
    if set.get(rev).is_none() {
        let known: Vec<_> = set.migrations.iter().map(|m| m.revision.as_str()).collect();
        return usage(format!(
            "unknown revision {rev:?}; the migrations in {} are: {}",
            set.dir.display(),
            if known.is_empty() {
                "(none)".to_string()
            } else {
                known.join(", ")
            }
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // the case tables read best as tuples
mod tests {
    use super::*;
    use crate::ledger::AppliedRow;

    fn status(set: &MigrationSet, applied: &[&str]) -> Status {
        let rows = applied
            .iter()
            .map(|r| AppliedRow {
                revision: r.to_string(),
                checksum: set.get(r).unwrap().checksum.clone(),
                applied_at: String::new(),
                duration_ms: 0,
            })
            .collect();
        Status::compare(set, Some(rows), "db".into(), "public".into())
    }

    #[test]
    fn plans_go_where_the_target_says() {
        let set = MigrationSet::fake(&["001_a", "002_b", "003_c"]);
        let up = |t: &str| Target::Up(t.parse().unwrap());
        let down = |t: &str| Target::Down(t.parse().unwrap());
        // (applied, target, direction, steps, to)
        let cases: Vec<(&[&str], Target, Direction, &[&str], Option<&str>)> = vec![
            (
                &[],
                up("head"),
                Direction::Up,
                &["001_a", "002_b", "003_c"],
                Some("003_c"),
            ),
            (
                &["001_a"],
                up("+1"),
                Direction::Up,
                &["002_b"],
                Some("002_b"),
            ),
            (
                &[],
                up("002_b"),
                Direction::Up,
                &["001_a", "002_b"],
                Some("002_b"),
            ),
            (
                &["001_a", "002_b"],
                up("002_b"),
                Direction::Up,
                &[],
                Some("002_b"),
            ),
            (
                &["001_a", "002_b", "003_c"],
                down("-1"),
                Direction::Down,
                &["003_c"],
                Some("002_b"),
            ),
            (
                &["001_a", "002_b", "003_c"],
                down("base"),
                Direction::Down,
                &["003_c", "002_b", "001_a"],
                None,
            ),
            (
                &["001_a", "002_b", "003_c"],
                down("001_a"),
                Direction::Down,
                &["003_c", "002_b"],
                Some("001_a"),
            ),
        ];
        for (applied, target, direction, steps, to) in cases {
            let p = plan(&set, &status(&set, applied), &target).unwrap();
            let got: Vec<&str> = p.steps.iter().map(|s| s.revision.as_str()).collect();
            assert_eq!(
                (p.direction, got.as_slice(), p.to.as_deref()),
                (direction, steps, to),
                "{target:?} from {applied:?}"
            );
            let file = if direction == Direction::Up {
                "up.sql"
            } else {
                "down.sql"
            };
            assert!(p.steps.iter().all(|s| s.sql.ends_with(file)), "{target:?}");
        }
    }

    #[test]
    fn impossible_targets_are_usage_errors() {
        let set = MigrationSet::fake(&["001_a", "002_b"]);
        let cases: Vec<(&[&str], Target, &str)> = vec![
            (
                &[],
                Target::Up("+3".parse().unwrap()),
                "only 2 migration(s) are pending",
            ),
            (
                &["001_a"],
                Target::Down("-2".parse().unwrap()),
                "only 1 migration(s) are applied",
            ),
            (
                &["001_a"],
                Target::Down("002_b".parse().unwrap()),
                "002_b is not applied",
            ),
            (
                &["001_a", "002_b"],
                Target::Up("001_a".parse().unwrap()),
                "use `downgrade 001_a`",
            ),
            (
                &[],
                Target::Up("nope".parse().unwrap()),
                "unknown revision \"nope\"; the migrations in migrations are: 001_a, 002_b",
            ),
        ];
        for (applied, target, text) in cases {
            let e = plan(&set, &status(&set, applied), &target).unwrap_err();
            assert_eq!(crate::error::kind_of(&e), crate::error::Kind::Usage);
            assert!(e.to_string().contains(text), "{e}");
        }
    }
}
