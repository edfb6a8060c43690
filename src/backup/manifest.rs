//! The manifest: the last object of a backup, and what makes it exist.
//!
//! Everything a restore or a verify needs is here, and everything read back from a store is
//! validated before use: the format version, that every object key lies inside its backup's
//! folder and is exactly the key the table's name implies, and that table names are plain
//! identifiers of one schema.

use serde::{Deserialize, Serialize};

use crate::error::usage;

/// Version of the manifest layout this build writes. Version 2 added each table's schema
/// and parent and the sequences no column owns; version 1 manifests are still read.
pub const MANIFEST_FORMAT: u32 = 2;
/// The oldest version this build reads.
pub const OLDEST_FORMAT: u32 = 1;
pub const MANIFEST_NAME: &str = "manifest.json";

/// Why a backup was taken; retention treats `PreDowngrade` as untouchable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Manual,
    Scheduled,
    PreDowngrade,
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Manual => "manual",
            Kind::Scheduled => "scheduled",
            Kind::PreDowngrade => "pre-downgrade",
        }
    }
}

/// Which database a backup came from, so a restore elsewhere can say so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseIdentity {
    pub name: String,
    /// `pg_control_system().system_identifier`, when the role may read it.
    pub system_identifier: Option<String>,
    pub server_version: String,
}

impl std::fmt::Display for DatabaseIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(id) = &self.system_identifier {
            write!(f, " (system {id})")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
}

/// A sequence a column of the table takes its values from (one it owns, or one its default
/// calls), as it stood at backup time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceEntry {
    /// Empty in manifests written before it was recorded (the sequence was the column's own).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub schema: String,
    pub name: String,
    pub column: String,
    pub last_value: i64,
    pub is_called: bool,
}

/// How `upgrade --restore` puts a pre-downgrade table back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRestore {
    /// The downgrade dropped the table; the re-upgrade creates it empty: load every row.
    #[default]
    Load,
    /// The table outlived the downgrade with its keys (rows were deleted, updated or the
    /// table rewritten): insert the rows whose primary key is missing, leave the rest.
    Merge,
    /// The table outlived the downgrade but its rows cannot be matched by key (the key was
    /// dropped, or there is none): replace its rows, if nobody added or removed any since.
    Replace,
}

impl OnRestore {
    fn is_load(&self) -> bool {
        *self == OnRestore::Load
    }
}

/// How much of a table an object holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    Table,
    Columns,
}

/// A sequence no column owns, as it stood at backup time; a restore never moves it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreeSequenceEntry {
    pub schema: String,
    pub name: String,
    pub last_value: i64,
    pub is_called: bool,
}

/// One table object. Each holds only the table's own rows (exported with `ONLY`): a
/// partitioned table's rows are in its partitions' entries, an inheritance parent's
/// children have entries of their own, so loading every entry into its own table loads
/// every row exactly once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableEntry {
    /// Empty in version 1 manifests, where every table is in the manifest's schema.
    #[serde(default)]
    pub schema: String,
    pub name: String,
    /// The table this one is a partition of, or inherits from (`schema.table`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// `table`: every column; `columns`: the primary key plus columns a downgrade drops or
    /// retypes, which a restore puts back by key into rows that exist again.
    #[serde(default)]
    pub scope: Scope,
    /// The CSV's columns, in header order.
    pub columns: Vec<ColumnEntry>,
    pub primary_key: Vec<String>,
    pub rows: u64,
    /// CSV bytes before compression.
    pub bytes: u64,
    pub compressed_bytes: u64,
    pub key: String,
    /// SHA-256 of the stored (compressed) object, hex.
    pub sha256: String,
    pub sequences: Vec<SequenceEntry>,
    #[serde(default, skip_serializing_if = "OnRestore::is_load")]
    pub on_restore: OnRestore,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub kind: Kind,
    pub label: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub database: DatabaseIdentity,
    pub schema: String,
    /// The migration revision when the backup was taken.
    pub revision: Option<String>,
    /// For pre-downgrade backups: the revision the downgrade went to.
    pub target_revision: Option<String>,
    pub zstd_level: i32,
    pub tables: Vec<TableEntry>,
    /// Every table as `schema.table`, each after the tables it references: the order to
    /// load them in. Empty in version 1 manifests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_order: Vec<String>,
    /// Sequences no column owns that the backup covers (pre-downgrade backups).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sequences: Vec<FreeSequenceEntry>,
}

impl TableEntry {
    /// `schema.table`, for messages and `--table`.
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Whether `name` (`table` or `schema.table`) names this entry.
    pub fn is(&self, name: &str) -> bool {
        name == self.name || name == self.display()
    }
}

impl Manifest {
    pub fn manifest_key(id: &str) -> String {
        format!("{id}/{MANIFEST_NAME}")
    }

    pub fn table_key(id: &str, schema: &str, table: &str) -> String {
        format!("{id}/{schema}.{table}.csv.zst")
    }

    /// Totals over the tables; a manifest whose totals do not fit is refused when read, so
    /// these never wrap.
    pub fn rows(&self) -> u64 {
        total(self.tables.iter().map(|t| t.rows)).unwrap_or(u64::MAX)
    }

    pub fn compressed_bytes(&self) -> u64 {
        total(self.tables.iter().map(|t| t.compressed_bytes)).unwrap_or(u64::MAX)
    }

    pub fn bytes(&self) -> u64 {
        total(self.tables.iter().map(|t| t.bytes)).unwrap_or(u64::MAX)
    }

    /// How messages name a table: bare in the manifest's own schema, `schema.table` else.
    pub fn label(&self, t: &TableEntry) -> String {
        if t.schema == self.schema {
            t.name.clone()
        } else {
            t.display()
        }
    }

    /// The entry `name` names (`table` or `schema.table`).
    pub fn table(&self, name: &str) -> Option<&TableEntry> {
        self.tables.iter().find(|t| t.is(name))
    }

    /// Parses and validates a manifest read from `id`'s folder.
    pub fn parse(data: &[u8], id: &str) -> anyhow::Result<Manifest> {
        #[derive(Deserialize)]
        struct Probe {
            format: Option<u32>,
        }
        let probe: Probe = serde_json::from_slice(data)
            .map_err(|e| anyhow::anyhow!("the manifest of backup {id} is not valid JSON: {e}"))?;
        match probe.format {
            Some(v) if (OLDEST_FORMAT..=MANIFEST_FORMAT).contains(&v) => {}
            Some(other) => anyhow::bail!(
                "the manifest of backup {id} has format version {other}; this backstop reads version {MANIFEST_FORMAT}: use a backstop release that knows it"
            ),
            None => anyhow::bail!("the manifest of backup {id} has no format version; it is not a backstop manifest"),
        }
        let mut m: Manifest = serde_json::from_slice(data)
            .map_err(|e| anyhow::anyhow!("the manifest of backup {id} is malformed: {e}"))?;
        for t in &mut m.tables {
            if t.schema.is_empty() {
                t.schema = m.schema.clone();
            }
        }
        m.validate(id)?;
        Ok(m)
    }

    fn validate(&self, id: &str) -> anyhow::Result<()> {
        if self.id != id {
            anyhow::bail!(
                "the manifest in folder {id} names backup {}; refusing it",
                self.id
            );
        }
        check_identifier(&self.schema)
            .map_err(|e| anyhow::anyhow!("manifest of {id}: schema {e}"))?;
        let mut seen = std::collections::HashSet::new();
        for t in &self.tables {
            check_identifier(&t.name)
                .map_err(|e| anyhow::anyhow!("manifest of {id}: table {e}"))?;
            check_identifier(&t.schema)
                .map_err(|e| anyhow::anyhow!("manifest of {id}: schema {e}"))?;
            if !seen.insert((&t.schema, &t.name)) {
                anyhow::bail!("manifest of {id} lists table {} twice", t.display());
            }
            let expected = Self::table_key(id, &t.schema, &t.name);
            if t.key != expected {
                anyhow::bail!(
                    "manifest of {id}: table {} points at object {:?}, not {expected:?}; refusing a key outside the backup",
                    t.name,
                    t.key
                );
            }
            if !self.load_order.is_empty() && !self.load_order.contains(&t.display()) {
                anyhow::bail!(
                    "manifest of {id}: table {} is missing from load_order",
                    t.display()
                );
            }
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                anyhow::bail!("manifest of {id}: table {} has no valid SHA-256", t.name);
            }
            for c in &t.columns {
                if c.name.contains('\0') || c.name.is_empty() {
                    anyhow::bail!(
                        "manifest of {id}: table {} has an invalid column name",
                        t.name
                    );
                }
            }
        }
        let fits = |f: fn(&TableEntry) -> u64| total(self.tables.iter().map(f)).is_some();
        if !(fits(|t| t.rows) && fits(|t| t.bytes) && fits(|t| t.compressed_bytes)) {
            anyhow::bail!("manifest of {id}: its tables' row or byte counts add up to more than 2^64; refusing it");
        }
        Ok(())
    }
}

/// The sum, unless it overflows.
fn total(mut values: impl Iterator<Item = u64>) -> Option<u64> {
    values.try_fold(0u64, |sum, v| sum.checked_add(v))
}

/// A name that can be used in an object key and as a quoted SQL identifier:
/// 1–63 bytes, no `/`, `\`, control characters, and not starting with a dot.
pub fn check_identifier(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 63
        || name.starts_with('.')
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(format!(
            "{name:?} is not a plain identifier (1-63 bytes, no slashes, control characters or leading dot)"
        ));
    }
    Ok(())
}

/// Positions of `nodes` in load order: every table after the tables it references among
/// them (`edges` are (referencing, referenced)). A cycle is broken by taking the next table
/// in the given order, relying on deferrable constraints.
pub fn load_order(nodes: &[u32], edges: &[(u32, u32)]) -> Vec<usize> {
    let mut remaining: Vec<usize> = (0..nodes.len()).collect();
    let mut placed: Vec<u32> = Vec::new();
    let mut order = Vec::new();
    while !remaining.is_empty() {
        let ready = remaining.iter().position(|&i| {
            edges
                .iter()
                .filter(|(child, _)| *child == nodes[i])
                .all(|(_, parent)| placed.contains(parent) || !nodes.contains(parent))
        });
        let i = remaining.remove(ready.unwrap_or(0));
        placed.push(nodes[i]);
        order.push(i);
    }
    order
}

/// Checks a backup id given on the command line: `YYYYMMDDTHHMMSSZ-<kind>-<hex>`.
pub fn check_backup_id(id: &str) -> anyhow::Result<()> {
    let ok = id.len() > 17
        && id.as_bytes()[8] == b'T'
        && id.as_bytes()[15] == b'Z'
        && id.as_bytes()[16] == b'-'
        && id[..8].bytes().all(|b| b.is_ascii_digit())
        && id[9..15].bytes().all(|b| b.is_ascii_digit())
        && id[17..]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return usage(format!(
            "{id:?} is not a backup id (like 20261124T132800Z-manual-3f9a1c); `backstop backups list` shows them"
        ));
    }
    Ok(())
}

/// A new id: UTC time, kind, random suffix; ids sort by time.
pub fn new_backup_id(kind: Kind, now: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let stamp = now
        .to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_else(|_| "19700101T000000Z".into());
    format!("{stamp}-{}-{}", kind.as_str(), random_hex(6))
}

/// `n` hex digits from the OS-seeded hasher (good enough to keep ids apart).
pub fn random_hex(n: usize) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let s = format!("{:016x}", h.finish());
    s[..n.min(16)].to_string()
}

#[cfg(test)]
impl Manifest {
    /// A manifest with no tables, for tests of what is decided from manifests alone
    /// (retention, restore plans).
    pub(crate) fn empty(id: &str, kind: Kind, created_at: &str) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            id: id.into(),
            kind,
            label: None,
            created_at: created_at.into(),
            database: DatabaseIdentity {
                name: "d".into(),
                system_identifier: None,
                server_version: "15".into(),
            },
            schema: "public".into(),
            revision: None,
            target_revision: None,
            zstd_level: 3,
            tables: vec![],
            load_order: vec![],
            sequences: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            id: id.into(),
            kind: Kind::Manual,
            label: None,
            created_at: "2026-11-24T13:28:00Z".into(),
            database: DatabaseIdentity {
                name: "app".into(),
                system_identifier: None,
                server_version: "15".into(),
            },
            schema: "public".into(),
            revision: Some("001_initial".into()),
            target_revision: None,
            zstd_level: 3,
            tables: vec![TableEntry {
                schema: "public".into(),
                name: "tasks".into(),
                parent: None,
                scope: Scope::Table,
                columns: vec![ColumnEntry {
                    name: "id".into(),
                    data_type: "integer".into(),
                }],
                primary_key: vec!["id".into()],
                rows: 1,
                bytes: 5,
                compressed_bytes: 10,
                key: Manifest::table_key(id, "public", "tasks"),
                sha256: "a".repeat(64),
                sequences: vec![],
                on_restore: OnRestore::Load,
            }],
            load_order: vec!["public.tasks".into()],
            sequences: vec![],
        }
    }

    #[test]
    fn load_order_puts_parents_first_and_survives_cycles() {
        type Case<'a> = (&'a [u32], &'a [(u32, u32)], &'a [usize]);
        let cases: &[Case] = &[
            (&[1, 2, 3], &[], &[0, 1, 2]),
            // 1 references 2, 2 references 3: 3, 2, 1.
            (&[1, 2, 3], &[(1, 2), (2, 3)], &[2, 1, 0]),
            // References to tables outside the restore do not hold anything up.
            (&[1, 2], &[(1, 9)], &[0, 1]),
            // A cycle: the first table goes first, the rest follows its references.
            (&[1, 2, 3], &[(1, 2), (2, 1), (3, 1)], &[0, 1, 2]),
        ];
        for (nodes, edges, want) in cases {
            assert_eq!(load_order(nodes, edges), *want, "{nodes:?} {edges:?}");
        }
    }

    #[test]
    fn totals_that_do_not_fit_are_refused_not_wrapped() {
        let id = "20261124T132800Z-manual-abcdef";
        let mut m = sample(id);
        let mut second = m.tables[0].clone();
        second.name = "notes".into();
        second.key = Manifest::table_key(id, "public", "notes");
        second.rows = u64::MAX;
        m.tables.push(second);
        m.load_order.push("public.notes".into());
        let err = Manifest::parse(&serde_json::to_vec(&m).unwrap(), id).unwrap_err();
        assert!(
            format!("{err:#}").contains("add up to more than 2^64"),
            "{err:#}"
        );
        assert_eq!(m.rows(), u64::MAX);
    }

    #[test]
    fn ids_sort_by_time_and_validate() {
        let t = time::macros::datetime!(2026-11-24 13:28:00 UTC);
        let id = new_backup_id(Kind::PreDowngrade, t);
        assert!(id.starts_with("20261124T132800Z-pre-downgrade-"), "{id}");
        check_backup_id(&id).unwrap();
        let later = new_backup_id(Kind::Manual, t + time::Duration::seconds(1));
        assert!(later > id);
        for bad in [
            "../etc",
            "20261124T132800Z-manual/../x",
            "x",
            "20261124T132800Z-MANUAL",
        ] {
            assert!(check_backup_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifests_round_trip_and_reject_escaping_keys() {
        let id = "20261124T132800Z-manual-abcdef";
        let m = sample(id);
        let bytes = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::parse(&bytes, id).unwrap(), m);

        let mut bad = m.clone();
        bad.tables[0].key = "../other/public.tasks.csv.zst".into();
        let err = Manifest::parse(&serde_json::to_vec(&bad).unwrap(), id).unwrap_err();
        assert!(err.to_string().contains("outside the backup"), "{err}");

        let mut bad = m.clone();
        bad.tables[0].name = "../../etc/passwd".into();
        assert!(Manifest::parse(&serde_json::to_vec(&bad).unwrap(), id).is_err());

        let mut bad = m.clone();
        bad.format = 99;
        let err = Manifest::parse(&serde_json::to_vec(&bad).unwrap(), id).unwrap_err();
        assert!(err.to_string().contains("format version 99"), "{err}");

        assert!(Manifest::parse(&bytes, "20261124T132800Z-manual-000000").is_err());
    }
}
