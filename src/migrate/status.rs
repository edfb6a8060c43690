//! How the migrations on disk stand against what a database recorded: applied, pending,
//! drifted or missing, and whether that state can be planned from at all. Pure: the rows
//! come from the ledger, the files from [`super::source`].

use serde::Serialize;

use super::source::MigrationSet;
use crate::error::{usage, verification};
use crate::ledger::AppliedRow;

/// How a migration stands against the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    Applied,
    Pending,
    /// Applied, but `up.sql` changed since.
    Drifted,
    /// Recorded as applied, but its folder is gone.
    Missing,
}

/// One line of `history`.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub revision: String,
    pub state: EntryState,
    pub applied_at: Option<String>,
    pub duration_ms: Option<i64>,
    /// Checksum of `up.sql` on disk.
    pub checksum: Option<String>,
    /// Checksum recorded when it was applied.
    pub recorded_checksum: Option<String>,
    #[serde(skip)]
    number: u64,
}

/// The migrations on disk compared with the bookkeeping of one database.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub database: String,
    pub schema: String,
    /// The highest applied revision.
    pub current: Option<String>,
    pub head: Option<String>,
    /// Whether `backstop_migrations` exists yet.
    pub tracked: bool,
    pub entries: Vec<Entry>,
}

impl Status {
    /// Compares the migrations on disk with the rows of `backstop_migrations` (`None`
    /// when the table does not exist yet).
    pub fn compare(
        set: &MigrationSet,
        applied: Option<Vec<AppliedRow>>,
        database: String,
        schema: String,
    ) -> Status {
        let tracked = applied.is_some();
        let rows = applied.unwrap_or_default();
        let mut entries: Vec<Entry> = set
            .migrations
            .iter()
            .map(|m| {
                let row = rows.iter().find(|r| r.revision == m.revision);
                Entry {
                    revision: m.revision.clone(),
                    state: match row {
                        None => EntryState::Pending,
                        Some(r) if r.checksum != m.checksum => EntryState::Drifted,
                        Some(_) => EntryState::Applied,
                    },
                    applied_at: row.map(|r| r.applied_at.clone()),
                    duration_ms: row.map(|r| r.duration_ms),
                    checksum: Some(m.checksum.clone()),
                    recorded_checksum: row.map(|r| r.checksum.clone()),
                    number: m.number,
                }
            })
            .collect();
        for r in rows.iter().filter(|r| set.get(&r.revision).is_none()) {
            entries.push(Entry {
                revision: r.revision.clone(),
                state: EntryState::Missing,
                applied_at: Some(r.applied_at.clone()),
                duration_ms: Some(r.duration_ms),
                checksum: None,
                recorded_checksum: Some(r.checksum.clone()),
                number: super::layout::revision_number(&r.revision).unwrap_or(u64::MAX),
            });
        }
        entries.sort_by(|a, b| a.number.cmp(&b.number).then(a.revision.cmp(&b.revision)));
        let mut status = Status {
            database,
            schema,
            current: None,
            head: set.head().map(|m| m.revision.clone()),
            tracked,
            entries,
        };
        status.current = status.applied().last().map(|e| e.revision.clone());
        status
    }

    /// `001_initial (head)`, or `(none)` on an empty database.
    pub fn current_label(&self) -> String {
        match &self.current {
            None => "(none)".into(),
            Some(c) if Some(c) == self.head.as_ref() => format!("{c} (head)"),
            Some(c) => c.clone(),
        }
    }

    pub fn drifted(&self) -> Vec<&Entry> {
        self.entries
            .iter()
            .filter(|e| e.state == EntryState::Drifted)
            .collect()
    }

    pub fn applied(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| {
            matches!(
                e.state,
                EntryState::Applied | EntryState::Drifted | EntryState::Missing
            )
        })
    }

    /// Refuses states in which no plan can be trusted: a recorded revision whose folder is
    /// gone, a pending migration numbered below an applied one, or drift (unless allowed).
    pub fn check_consistent(&self, allow_drift: bool) -> anyhow::Result<()> {
        if let Some(e) = self.entries.iter().find(|e| e.state == EntryState::Missing) {
            return usage(format!(
                "revision {} is recorded as applied in {} but its migration folder is gone; restore the folder (or `stamp` the database to a revision that exists)",
                e.revision, self.database
            ));
        }
        if let Some(current) = self
            .entries
            .iter()
            .rev()
            .find(|e| e.state != EntryState::Pending)
        {
            if let Some(gap) = self
                .entries
                .iter()
                .find(|e| e.state == EntryState::Pending && e.number < current.number)
            {
                return usage(format!(
                    "migration {} is pending but numbered below the applied {}; give it a number above {} so the order is linear",
                    gap.revision, current.revision, current.revision
                ));
            }
        }
        let drifted = self.drifted();
        if !drifted.is_empty() && !allow_drift {
            let names: Vec<_> = drifted.iter().map(|e| e.revision.as_str()).collect();
            return verification(format!(
                "the up script of {} changed since it was applied (checksum drift; for Alembic, its revision file); restore the original file, or pass --allow-drift if the change is intended",
                names.join(", ")
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // the case tables read best as tuples
mod tests {
    use super::*;
    use crate::error::{kind_of, Kind};

    /// A row as the ledger would return it for `set`'s migration `rev`.
    pub(crate) fn row(set: &MigrationSet, rev: &str) -> AppliedRow {
        AppliedRow {
            revision: rev.into(),
            checksum: set.get(rev).map_or("gone".into(), |m| m.checksum.clone()),
            applied_at: "2026-11-25 00:00:00+00".into(),
            duration_ms: 1,
        }
    }

    pub(crate) fn status(set: &MigrationSet, applied: Option<Vec<AppliedRow>>) -> Status {
        Status::compare(set, applied, "db".into(), "public".into())
    }

    #[test]
    fn states_current_and_head() {
        let set = MigrationSet::fake(&["001_a", "002_b", "003_c"]);
        let mut drifted = row(&set, "002_b");
        drifted.checksum = "changed".into();
        // (applied rows, states in order, current label)
        let cases: Vec<(Option<Vec<AppliedRow>>, Vec<EntryState>, &str)> = vec![
            (None, vec![EntryState::Pending; 3], "(none)"),
            (
                Some(vec![row(&set, "001_a")]),
                vec![
                    EntryState::Applied,
                    EntryState::Pending,
                    EntryState::Pending,
                ],
                "001_a",
            ),
            (
                Some(vec![row(&set, "001_a"), drifted, row(&set, "003_c")]),
                vec![
                    EntryState::Applied,
                    EntryState::Drifted,
                    EntryState::Applied,
                ],
                "003_c (head)",
            ),
            (
                Some(vec![row(&set, "001_a"), row(&set, "009_gone")]),
                vec![
                    EntryState::Applied,
                    EntryState::Pending,
                    EntryState::Pending,
                    EntryState::Missing,
                ],
                "009_gone",
            ),
        ];
        for (applied, states, label) in cases {
            let st = status(&set, applied);
            let got: Vec<EntryState> = st.entries.iter().map(|e| e.state).collect();
            assert_eq!(got, states);
            assert_eq!(st.current_label(), label);
            assert_eq!(st.head.as_deref(), Some("003_c"));
        }
    }

    #[test]
    fn inconsistent_states_are_refused_with_their_kind() {
        let set = MigrationSet::fake(&["001_a", "002_b", "003_c"]);
        let mut drifted = row(&set, "001_a");
        drifted.checksum = "changed".into();
        // (applied rows, allow_drift, expected kind and text, or None for consistent)
        let cases: Vec<(Vec<AppliedRow>, bool, Option<(Kind, &str)>)> = vec![
            (vec![row(&set, "001_a")], false, None),
            (
                vec![row(&set, "001_a"), row(&set, "003_c")],
                false,
                Some((
                    Kind::Usage,
                    "002_b is pending but numbered below the applied 003_c",
                )),
            ),
            (
                vec![row(&set, "001_a"), row(&set, "005_gone")],
                false,
                Some((Kind::Usage, "005_gone is recorded as applied")),
            ),
            (
                vec![drifted.clone()],
                false,
                Some((Kind::Verification, "the up script of 001_a changed")),
            ),
            (vec![drifted], true, None),
        ];
        for (applied, allow_drift, want) in cases {
            let got = status(&set, Some(applied)).check_consistent(allow_drift);
            match (got, want) {
                (Ok(()), None) => {}
                (Err(e), Some((kind, text))) => {
                    assert_eq!(kind_of(&e), kind, "{e}");
                    assert!(e.to_string().contains(text), "{e}");
                }
                (got, want) => panic!("got {got:?}, want {want:?}"),
            }
        }
    }
}
