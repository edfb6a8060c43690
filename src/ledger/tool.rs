//! A migration tool's own bookkeeping table (see [`crate::migrate::tool`]), read and written
//! beside `backstop_migrations` and in the same transactions, so the tool's CLI and
//! backstop never disagree on which migrations ran.

use std::time::Duration;

use sha2::{Digest, Sha384};
use tokio_postgres::GenericClient;

use crate::migrate::{Direction, Migration, MigrationSet, Tool, ToolChoice};
use crate::pg::{qualified, PgContext};

/// The bookkeeping table of `tool` in one schema.
#[derive(Debug, Clone)]
pub struct ToolTable {
    pub tool: Tool,
    schema: String,
}

/// One migration the tool's table records as applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolApplied {
    /// The revision of the set it records, or the version as the tool wrote it when no
    /// migration of the set has that version (its files are gone).
    pub revision: String,
    /// sqlx recorded a checksum that is not the up file's as it is now.
    pub modified: bool,
}

impl ToolTable {
    pub fn new(tool: Tool, schema: &str) -> ToolTable {
        ToolTable {
            tool,
            schema: schema.to_string(),
        }
    }

    /// Which table `choice` keeps here: for `.up.sql` pairs nothing else tells apart,
    /// whichever of sqlx's and golang-migrate's the database has (`None` with neither).
    pub async fn resolve(
        choice: ToolChoice,
        schema: &str,
        client: &impl GenericClient,
    ) -> anyhow::Result<Option<ToolTable>> {
        match choice {
            ToolChoice::Own => Ok(None),
            ToolChoice::Known(tool) => Ok(Some(ToolTable::new(tool, schema))),
            ToolChoice::Pairs => {
                for tool in [Tool::Sqlx, Tool::GolangMigrate] {
                    let table = ToolTable::new(tool, schema);
                    if table.exists(client).await? {
                        return Ok(Some(table));
                    }
                }
                Ok(None)
            }
        }
    }

    /// `diesel's __diesel_schema_migrations`, for messages.
    pub fn describe(&self) -> String {
        format!("{}'s {}", self.tool.name(), self.tool.table())
    }

    fn table(&self) -> String {
        qualified(&self.schema, self.tool.table())
    }

    /// Whether the table is there (golang-migrate's only with its `dirty` column, which
    /// tells it from another tool's `schema_migrations`).
    pub async fn exists(&self, client: &impl GenericClient) -> anyhow::Result<bool> {
        let column = match self.tool {
            Tool::GolangMigrate => "dirty",
            _ => "version",
        };
        Ok(client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                                 WHERE attrelid = pg_catalog.to_regclass($1) AND attname = $2
                                   AND NOT attisdropped)",
                &[&self.table(), &column],
            )
            .await
            .pg(|| format!("checking for {}", self.describe()))?
            .get(0))
    }

    /// Creates the table as the tool itself creates it, if it is missing.
    pub async fn ensure(&self, client: &impl GenericClient) -> anyhow::Result<()> {
        let t = self.table();
        let ddl = match self.tool {
            Tool::Diesel => format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                     version VARCHAR(50) PRIMARY KEY NOT NULL,
                     run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
                 )"
            ),
            Tool::GolangMigrate => format!(
                "CREATE TABLE IF NOT EXISTS {t} (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)"
            ),
            Tool::Sqlx => format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                     version BIGINT PRIMARY KEY,
                     description TEXT NOT NULL,
                     installed_on TIMESTAMPTZ NOT NULL DEFAULT now(),
                     success BOOLEAN NOT NULL,
                     checksum BYTEA NOT NULL,
                     execution_time BIGINT NOT NULL
                 )"
            ),
            Tool::Dbmate => format!(
                "CREATE TABLE IF NOT EXISTS {t} (version character varying NOT NULL PRIMARY KEY)"
            ),
        };
        client
            .batch_execute(&ddl)
            .await
            .pg(|| format!("creating {}", self.describe()))
    }

    /// The migrations the table records, oldest first, or `None` when there is no table. A
    /// state the tool itself refuses to go on from (golang-migrate's `dirty`, sqlx's
    /// `success = false`) is refused here too, with what the tool's users do about it.
    pub async fn applied(
        &self,
        client: &impl GenericClient,
        set: &MigrationSet,
    ) -> anyhow::Result<Option<Vec<ToolApplied>>> {
        if !self.exists(client).await? {
            return Ok(None);
        }
        let by_number = |v: i64| -> ToolApplied {
            let found = set.migrations.iter().find(|m| m.number as i64 == v);
            ToolApplied {
                revision: found.map_or_else(|| v.to_string(), |m| m.revision.clone()),
                modified: false,
            }
        };
        let read = |what: &'static str| {
            let describe = self.describe();
            move || format!("reading {describe} ({what})")
        };
        let t = self.table();
        let applied = match self.tool {
            Tool::Diesel | Tool::Dbmate => client
                .query(&format!("SELECT version::text FROM {t}"), &[])
                .await
                .pg(read("versions"))?
                .iter()
                .map(|r| {
                    let version: String = r.get(0);
                    let found = set
                        .migrations
                        .iter()
                        .find(|m| self.tool.version_of(&m.revision) == version);
                    ToolApplied {
                        revision: found.map_or(version, |m| m.revision.clone()),
                        modified: false,
                    }
                })
                .collect(),
            Tool::GolangMigrate => {
                let row = client
                    .query_opt(
                        &format!("SELECT version, dirty FROM {t} ORDER BY version DESC LIMIT 1"),
                        &[],
                    )
                    .await
                    .pg(read("version"))?;
                let Some(row) = row else {
                    return Ok(Some(Vec::new()));
                };
                let (version, dirty): (i64, bool) = (row.get(0), row.get(1));
                if dirty {
                    return crate::error::refused(format!(
                        "{} says version {version} is dirty: a migration failed part-way and golang-migrate stopped; make the schema match version {version} (or the one before) by hand, record that with `migrate force VERSION`, then run backstop again; nothing was changed",
                        self.describe()
                    ));
                }
                let mut applied: Vec<ToolApplied> = set
                    .migrations
                    .iter()
                    .filter(|m| m.number as i64 <= version)
                    .map(|m| ToolApplied {
                        revision: m.revision.clone(),
                        modified: false,
                    })
                    .collect();
                if !set.migrations.iter().any(|m| m.number as i64 == version) {
                    applied.push(by_number(version));
                }
                applied
            }
            Tool::Sqlx => {
                let rows = client
                    .query(
                        &format!("SELECT version, success, checksum FROM {t} ORDER BY version"),
                        &[],
                    )
                    .await
                    .pg(read("versions"))?;
                let mut applied = Vec::new();
                for r in rows {
                    let (version, success, recorded): (i64, bool, Vec<u8>) =
                        (r.get(0), r.get(1), r.get(2));
                    if !success {
                        return crate::error::refused(format!(
                            "{} says migration {version} is partially applied (success = false), and sqlx stops there; fix the schema by hand and delete its row from _sqlx_migrations, then run backstop again; nothing was changed",
                            self.describe()
                        ));
                    }
                    let mut entry = by_number(version);
                    if let Some(m) = set.get(&entry.revision) {
                        entry.modified = up_checksum(m).is_some_and(|c| c != recorded);
                    }
                    applied.push(entry);
                }
                applied
            }
        };
        Ok(Some(applied))
    }

    /// Records a step as the tool would have, inside the step's transaction.
    pub async fn record(
        &self,
        tx: &impl GenericClient,
        set: &MigrationSet,
        direction: Direction,
        revision: &str,
        took: Duration,
    ) -> anyhow::Result<()> {
        let Some(index) = set.position(revision) else {
            anyhow::bail!("{revision} is not a migration of {}", set.dir.display());
        };
        let m = &set.migrations[index];
        let t = self.table();
        let version = self.tool.version_of(revision);
        let what = || format!("recording {revision} in {}", self.describe());
        let touched = match (self.tool, direction) {
            (Tool::Diesel | Tool::Dbmate, Direction::Up) => tx
                .execute(
                    &format!("INSERT INTO {t} (version) VALUES ($1)"),
                    &[&version],
                )
                .await
                .pg(what)?,
            (Tool::Diesel | Tool::Dbmate, Direction::Down) => tx
                .execute(&format!("DELETE FROM {t} WHERE version = $1"), &[&version])
                .await
                .pg(what)?,
            (Tool::GolangMigrate, _) => {
                let now = match direction {
                    Direction::Up => Some(m),
                    Direction::Down => index.checked_sub(1).map(|i| &set.migrations[i]),
                };
                self.set_golang_version(tx, now).await?;
                1
            }
            (Tool::Sqlx, Direction::Up) => tx
                .execute(
                    &format!(
                        "INSERT INTO {t} (version, description, success, checksum, execution_time)
                         VALUES ($1, $2, TRUE, $3, $4)"
                    ),
                    &[
                        &(m.number as i64),
                        &Tool::description_of(revision),
                        &up_checksum(m).unwrap_or_default(),
                        &(took.as_nanos() as i64),
                    ],
                )
                .await
                .pg(what)?,
            (Tool::Sqlx, Direction::Down) => tx
                .execute(
                    &format!("DELETE FROM {t} WHERE version = $1"),
                    &[&(m.number as i64)],
                )
                .await
                .pg(what)?,
        };
        if touched != 1 {
            anyhow::bail!(
                "{} did not record {revision} as {} ({touched} rows), so the tool and backstop would disagree on the current revision; the step was not recorded (compare {} with `backstop history`)",
                self.describe(),
                match direction {
                    Direction::Up => "applied",
                    Direction::Down => "reverted",
                },
                self.tool.table()
            );
        }
        Ok(())
    }

    /// golang-migrate keeps one row, the current version.
    async fn set_golang_version(
        &self,
        tx: &impl GenericClient,
        current: Option<&Migration>,
    ) -> anyhow::Result<()> {
        let t = self.table();
        tx.execute(&format!("DELETE FROM {t}"), &[])
            .await
            .pg(|| format!("clearing {}", self.describe()))?;
        if let Some(m) = current {
            tx.execute(
                &format!("INSERT INTO {t} (version, dirty) VALUES ($1, false)"),
                &[&(m.number as i64)],
            )
            .await
            .pg(|| format!("recording {} in {}", m.revision, self.describe()))?;
        }
        Ok(())
    }

    /// Makes the table record exactly `applied` (a stamp, or adopting a database backstop
    /// migrated before it kept the tool's table), inside the caller's transaction.
    pub async fn stamp(
        &self,
        tx: &impl GenericClient,
        applied: &[&Migration],
    ) -> anyhow::Result<()> {
        self.ensure(tx).await?;
        let t = self.table();
        let what = || format!("stamping {}", self.describe());
        match self.tool {
            Tool::GolangMigrate => self.set_golang_version(tx, applied.last().copied()).await?,
            Tool::Diesel | Tool::Dbmate => {
                let versions: Vec<String> = applied
                    .iter()
                    .map(|m| self.tool.version_of(&m.revision))
                    .collect();
                tx.execute(
                    &format!("DELETE FROM {t} WHERE version <> ALL($1)"),
                    &[&versions],
                )
                .await
                .pg(what)?;
                tx.execute(
                    &format!(
                        "INSERT INTO {t} (version) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING"
                    ),
                    &[&versions],
                )
                .await
                .pg(what)?;
            }
            Tool::Sqlx => {
                let versions: Vec<i64> = applied.iter().map(|m| m.number as i64).collect();
                tx.execute(
                    &format!("DELETE FROM {t} WHERE version <> ALL($1)"),
                    &[&versions],
                )
                .await
                .pg(what)?;
                for m in applied {
                    tx.execute(
                        &format!(
                            "INSERT INTO {t} (version, description, success, checksum, execution_time)
                             VALUES ($1, $2, TRUE, $3, 0) ON CONFLICT (version) DO NOTHING"
                        ),
                        &[
                            &(m.number as i64),
                            &Tool::description_of(&m.revision),
                            &up_checksum(m).unwrap_or_default(),
                        ],
                    )
                    .await
                    .pg(what)?;
                }
            }
        }
        Ok(())
    }
}

/// sqlx's checksum: SHA-384 of the up file exactly as it is on disk.
fn up_checksum(m: &Migration) -> Option<Vec<u8>> {
    let text = std::fs::read(&m.up.path).ok()?;
    Some(Sha384::digest(&text).to_vec())
}
