//! Generated rows for `rollback-test`: every table of every user schema filled with N rows that respect
//! column types, NOT NULL, foreign keys and (mostly) uniqueness, with the values that break
//! naive CSV handling — NULLs, quotes, commas, newlines and non-ASCII text.
//!
//! Real schemas do not take any rows blindly, so each table is filled in a transaction of its
//! own and, when PostgreSQL refuses the rows, tried again: with the nullable columns all NULL
//! or all set (CHECK constraints that tie columns together), then row by row, keeping the rows
//! it takes. Values of types it does not know (extension types, domains) are whatever of a
//! few candidates the type accepts, else the column's default. A table that triggers already
//! filled (a 1:1 profile made with each user) is checked as it is. A table it cannot fill at
//! all is skipped with the reason, and every other table is still checked.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Serialize;
use tokio_postgres::Client;

mod constraints;

use crate::pg::catalog::all_user_tables;
use crate::pg::{qualified, quote_ident, quote_literal, PgContext, PgError};

struct Column {
    name: String,
    sql_type: String,
    typname: String,
    category: String,
    nullable: bool,
    /// serial, identity or generated: left to the database.
    automatic: bool,
    has_default: bool,
    /// The parent table (quoted and qualified) and column of a single-column foreign key.
    references: Option<(String, String)>,
    /// The CHECKs on this column alone and on its domain, as PostgreSQL prints them.
    checks: Vec<String>,
}

/// A table the data check covers, and how its rows came to be.
#[derive(Debug, Clone, Serialize)]
pub struct Filled {
    /// `name` in the configured schema, `schema.name` in any other.
    pub table: String,
    /// The table for SQL, quoted and qualified.
    #[serde(skip)]
    pub target: String,
    pub rows: i64,
    /// `generated`, `generated, nullable columns NULL`, `row by row`, `made by triggers`…
    pub how: String,
}

/// A table left out of the data check, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub table: String,
    pub reason: String,
}

/// What filling the schema did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FillReport {
    pub filled: Vec<Filled>,
    pub skipped: Vec<Skipped>,
}

impl FillReport {
    pub fn tables(&self) -> Vec<String> {
        self.filled.iter().map(|f| f.table.clone()).collect()
    }
}

/// Which rows one INSERT makes: how the nullable columns are set.
#[derive(Clone, Copy, PartialEq)]
enum Nulls {
    /// One row in seven has NULLs: the values CSV handling gets wrong.
    Some,
    /// Every nullable column NULL.
    All,
    /// No NULLs at all.
    None,
}

impl Nulls {
    fn describe(self) -> &'static str {
        match self {
            Nulls::Some => "generated",
            Nulls::All => "generated, nullable columns NULL",
            Nulls::None => "generated, no NULLs",
        }
    }
}

/// What a column gets.
enum Value {
    Expr(String),
    /// Left out of the INSERT: the column's default (or NULL).
    Omitted,
}

/// Fills every table of every user schema with `rows` rows, parents before children; `skip`
/// names tables to leave out; tables of `schema` are named without it. Fails only when the
/// database does not answer.
pub async fn fill(
    client: &Client,
    schema: &str,
    rows: u64,
    skip: &[String],
) -> anyhow::Result<FillReport> {
    let tables: Vec<(u32, String, String)> = all_user_tables(client)
        .await?
        .into_iter()
        .filter(|r| !r.is_partition)
        .map(|r| {
            let shown = if r.schema == schema {
                r.name.clone()
            } else {
                format!("{}.{}", r.schema, r.name)
            };
            (r.oid, shown, r.qualified())
        })
        .collect();
    let edges: Vec<(u32, u32)> = client
        .query(
            "SELECT conrelid, confrelid FROM pg_catalog.pg_constraint WHERE contype = 'f' AND conrelid <> confrelid",
            &[],
        )
        .await
        .pg(|| "reading foreign keys")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut order: Vec<(u32, String, String)> = Vec::new();
    let mut remaining = tables.clone();
    while !remaining.is_empty() {
        let i = remaining
            .iter()
            .position(|(oid, _, _)| {
                edges
                    .iter()
                    .filter(|(c, p)| c == oid && tables.iter().any(|(t, _, _)| t == p))
                    .all(|(_, p)| order.iter().any(|(o, _, _)| o == p))
            })
            .unwrap_or(0);
        order.push(remaining.remove(i));
    }
    // Tables the up steps seeded (lookup tables) are checked with their seed as it is.
    let mut seeded = Vec::new();
    for (oid, _, target) in &order {
        if count(client, target).await? > 0 {
            seeded.push(*oid);
        }
    }
    let mut report = FillReport::default();
    for (oid, name, target) in order {
        let skipped = |reason: String| Skipped {
            table: name.clone(),
            reason,
        };
        if skip
            .iter()
            .any(|s| s == &name || *s == format!("{schema}.{name}"))
        {
            report
                .skipped
                .push(skipped("left out with --rows-skip".into()));
            continue;
        }
        let already = count(client, &target).await?;
        if already > 0 {
            report.filled.push(Filled {
                table: name,
                target,
                rows: already,
                how: if seeded.contains(&oid) {
                    "seeded by the migrations, checked as they left it".into()
                } else {
                    "made by triggers as other tables were filled".into()
                },
            });
            continue;
        }
        let columns = columns(client, oid).await?;
        let values = match plan_values(client, &columns, rows).await? {
            Ok(v) => v,
            Err(reason) => {
                report.skipped.push(skipped(reason));
                continue;
            }
        };
        match insert(client, &target, &values, rows).await? {
            Ok((rows, how)) => report.filled.push(Filled {
                table: name,
                target,
                rows,
                how,
            }),
            Err(reason) => report.skipped.push(skipped(reason)),
        }
    }
    Ok(report)
}

async fn count(client: &Client, target: &str) -> anyhow::Result<i64> {
    Ok(client
        .query_one(&format!("SELECT count(*) FROM {target}"), &[])
        .await
        .pg(|| format!("counting the rows of {target}"))?
        .get(0))
}

/// A value for every column the INSERT names, or why the table cannot be filled.
async fn plan_values(
    client: &Client,
    columns: &[Column],
    rows: u64,
) -> anyhow::Result<Result<Vec<(String, Value, bool)>, String>> {
    let mut out = Vec::new();
    for c in columns.iter().filter(|c| !c.automatic) {
        if let (Some((parent, _)), false) = (&c.references, c.nullable) {
            if count(client, parent).await? == 0 {
                return Ok(Err(format!(
                    "its NOT NULL column {} references {parent}, which has no rows (it was left out of the data check); a nullable foreign key would have been filled with NULL",
                    c.name
                )));
            }
        }
        let mut chosen = None;
        for candidate in candidates(c, rows) {
            if accepts(client, &candidate, rows).await? {
                chosen = Some(candidate);
                break;
            }
        }
        match chosen {
            Some(e) => out.push((quote_ident(&c.name), Value::Expr(e), c.nullable)),
            None if c.has_default || c.nullable => {
                out.push((quote_ident(&c.name), Value::Omitted, c.nullable))
            }
            None => {
                return Ok(Err(format!(
                    "no value of type {} could be made for NOT NULL column {} (no default to fall back on)",
                    c.sql_type, c.name
                )))
            }
        }
    }
    Ok(Ok(out))
}

/// Whether PostgreSQL evaluates `expr` for the first rows (a cast it cannot make, a domain
/// CHECK it breaks, fail here, before any row is written).
async fn accepts(client: &Client, expr: &str, rows: u64) -> anyhow::Result<bool> {
    let probe = format!(
        "SELECT count({expr}) FROM generate_series(1, {}) g",
        rows.clamp(1, 50)
    );
    Ok(client.simple_query(&probe).await.is_ok())
}

/// Tries the whole table at once in each way of setting NULLs, then row by row; returns the
/// rows written and how, or why none could be.
async fn insert(
    client: &Client,
    target: &str,
    values: &[(String, Value, bool)],
    rows: u64,
) -> anyhow::Result<Result<(i64, String), String>> {
    let sql = |nulls: Nulls, from: &str, to: &str| {
        let (names, exprs): (Vec<&str>, Vec<String>) = values
            .iter()
            .filter_map(|(name, v, nullable)| match v {
                Value::Omitted => None,
                Value::Expr(_) if *nullable && nulls == Nulls::All => None,
                Value::Expr(e) if *nullable && nulls == Nulls::Some => Some((
                    name.as_str(),
                    format!("CASE WHEN g % 7 = 0 THEN NULL ELSE {e} END"),
                )),
                Value::Expr(e) => Some((name.as_str(), e.clone())),
            })
            .unzip();
        if names.is_empty() {
            return format!("INSERT INTO {target} SELECT FROM generate_series({from}, {to}) g");
        }
        format!(
            "INSERT INTO {target} ({}) SELECT {} FROM generate_series({from}, {to}) g",
            names.join(", "),
            exprs.join(", ")
        )
    };
    let variants = [Nulls::Some, Nulls::All, Nulls::None];
    let mut last = String::new();
    for nulls in variants {
        client
            .batch_execute("BEGIN")
            .await
            .pg(|| "starting a fill")?;
        let all = sql(nulls, "1", &rows.to_string());
        match attempt(client, &all, "COMMIT", "ROLLBACK").await? {
            Ok(()) => return Ok(Ok((rows as i64, nulls.describe().into()))),
            Err(why) => last = why,
        }
    }
    // Row by row: keep every row one of the ways gets in.
    client
        .batch_execute("BEGIN")
        .await
        .pg(|| "starting a fill")?;
    let mut written = 0i64;
    for g in 1..=rows {
        let g = g.to_string();
        for nulls in variants {
            client
                .batch_execute("SAVEPOINT fill_row")
                .await
                .pg(|| "filling row by row")?;
            let one = sql(nulls, &g, &g);
            match attempt(
                client,
                &one,
                "RELEASE SAVEPOINT fill_row",
                "ROLLBACK TO SAVEPOINT fill_row",
            )
            .await?
            {
                Ok(()) => {
                    written += 1;
                    break;
                }
                Err(why) => last = why,
            }
        }
    }
    client
        .batch_execute("COMMIT")
        .await
        .pg(|| "ending a fill")?;
    if written == 0 {
        return Ok(Err(format!("no generated row was accepted: {last}")));
    }
    Ok(Ok((
        written,
        format!("row by row, {written} of {rows} accepted (the others: {last})"),
    )))
}

/// Runs `sql`, then `keep` when PostgreSQL took it or `undo` when it refused; the refusal
/// comes back as text.
async fn attempt(
    client: &Client,
    sql: &str,
    keep: &str,
    undo: &str,
) -> anyhow::Result<Result<(), String>> {
    let (outcome, end) = match client.batch_execute(sql).await {
        Ok(()) => (Ok(()), keep),
        Err(e) => (Err(generated_data_error(e)), undo),
    };
    client.batch_execute(end).await.pg(|| "filling a table")?;
    Ok(outcome)
}

/// An error about generated rows, values included: they are made up, on a scratch database.
pub fn generated_data_error(e: tokio_postgres::Error) -> String {
    PgError::with_values(e).message
}

async fn columns(client: &Client, oid: u32) -> anyhow::Result<Vec<Column>> {
    let fks: BTreeMap<i16, (String, String)> = client
        .query(
            "SELECT con.conkey[1], pn.nspname::text, pc.relname::text, pa.attname::text
             FROM pg_catalog.pg_constraint con
             JOIN pg_catalog.pg_class pc ON pc.oid = con.confrelid
             JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
             JOIN pg_catalog.pg_attribute pa ON pa.attrelid = con.confrelid AND pa.attnum = con.confkey[1]
             WHERE con.contype = 'f' AND con.conrelid = $1 AND array_length(con.conkey, 1) = 1",
            &[&oid],
        )
        .await
        .pg(|| "reading foreign keys")?
        .iter()
        .map(|r| {
            let (schema, table): (String, String) = (r.get(1), r.get(2));
            (r.get(0), (qualified(&schema, &table), r.get(3)))
        })
        .collect();
    Ok(client
        .query(
            "SELECT a.attnum, a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), t.typname::text,
                    t.typcategory::text, NOT a.attnotnull,
                    a.attidentity <> '' OR a.attgenerated <> ''
                      OR coalesce(pg_catalog.pg_get_expr(d.adbin, d.adrelid), '') LIKE 'nextval(%',
                    d.adbin IS NOT NULL,
                    ARRAY(SELECT pg_catalog.pg_get_constraintdef(con.oid) FROM pg_catalog.pg_constraint con
                          WHERE con.contype = 'c' AND con.conrelid = a.attrelid AND con.conkey = ARRAY[a.attnum]
                          UNION ALL
                          SELECT pg_catalog.pg_get_constraintdef(con.oid) FROM pg_catalog.pg_constraint con
                          WHERE con.contype = 'c' AND con.contypid IN (
                              WITH RECURSIVE domains(oid) AS (
                                  SELECT a.atttypid
                                  UNION ALL
                                  SELECT bt.typbasetype FROM pg_catalog.pg_type bt JOIN domains ON bt.oid = domains.oid
                                  WHERE bt.typtype = 'd')
                              SELECT oid FROM domains))
             FROM pg_catalog.pg_attribute a
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .pg(|| "reading columns")
        .context("preparing generated rows")?
        .iter()
        .map(|r| Column {
            references: fks.get(&r.get::<_, i16>(0)).cloned(),
            name: r.get(1),
            sql_type: r.get(2),
            typname: r.get(3),
            category: r.get(4),
            nullable: r.get(5),
            automatic: r.get(6),
            has_default: r.get(7),
            checks: r.get(8),
        })
        .collect())
}

/// SQL expressions over `g` (1..N) for one column, best first: the value for its type, then
/// what a type backstop does not know may accept (text, a number); empty when none fits.
fn candidates(c: &Column, rows: u64) -> Vec<String> {
    if let Some((parent, column)) = &c.references {
        let col = quote_ident(column);
        return vec![format!(
            "(SELECT {col} FROM {parent} ORDER BY {col} OFFSET ((g - 1) % greatest((SELECT count(*) FROM {parent}), 1)) LIMIT 1)"
        )];
    }
    let typed = match (c.category.as_str(), c.typname.as_str()) {
        (_, "int2") => Some("(g % 32000)".to_string()),
        ("N", "int4" | "int8" | "oid") => Some("g".to_string()),
        ("N", _) => Some("(g * 1.25)".to_string()),
        ("S", _) => Some(format!(
            "{} || g || E' \"quoted\", comma\\nnew line, tab\\t, caf\u{e9} \u{1f980}'",
            quote_literal("row ")
        )),
        ("B", _) => Some("(g % 2 = 0)".to_string()),
        ("D", "date") => Some("(date '2026-01-01' + g::int)".to_string()),
        ("D", "time" | "timetz") => {
            Some("(time '00:00:00.000001' + g * interval '1 second')".to_string())
        }
        ("D", _) => Some(
            "(timestamptz '2026-01-01 00:00:00.123456+00' + g * interval '1 minute 1 microsecond')"
                .to_string(),
        ),
        ("T", _) => Some("(g * interval '1 minute 2 seconds')".to_string()),
        ("U", "uuid") => Some("md5(g::text)::uuid".to_string()),
        ("U", "json" | "jsonb") => {
            Some("json_build_object('g', g, 'text', 'a \"q\", b')".to_string())
        }
        ("U", "bytea") => Some("decode(md5(g::text), 'hex')".to_string()),
        ("E", _) => Some(format!(
            "(enum_range(NULL::{t}))[1 + (g % array_length(enum_range(NULL::{t}), 1))::int]",
            t = c.sql_type
        )),
        ("I", "inet") => Some("('10.0.0.0'::inet + g)".to_string()),
        ("A", _) => Some("'{}'".to_string()),
        _ => None,
    };
    // What an extension type or a domain with a CHECK may take instead: letters only (ltree
    // labels, a `^[a-z]+$` domain), a text with the row number, a bare number.
    let fallbacks = [
        "('v' || g)".to_string(),
        "(repeat(chr(97 + (g % 26)::int), 1 + (g / 26)::int))".to_string(),
        "g".to_string(),
    ];
    // Values its CHECKs (and its domain's) accept come first: values made for them, then
    // the value for its type cut to the lengths and case they ask for.
    let fitted = typed
        .as_deref()
        .and_then(|t| constraints::shaped(&c.checks, t));
    constraints::candidates(&c.checks, rows)
        .into_iter()
        .chain(fitted)
        .chain(typed)
        .chain(fallbacks)
        .map(|v| format!("({v})::{}", c.sql_type))
        .collect()
}

/// md5 over every row of every filled table (rows ordered by their text), by table, for
/// before/after checks.
pub async fn fingerprint(
    client: &Client,
    tables: &[Filled],
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for t in tables {
        let md5: String = client
            .query_one(
                &format!(
                    "SELECT count(*) || ':' || coalesce(md5(string_agg(r::text, E'\\n' ORDER BY r::text)), '') FROM {} r",
                    t.target
                ),
                &[],
            )
            .await
            .pg(|| format!("fingerprinting {}", t.table))?
            .get(0);
        out.insert(t.table.clone(), md5);
    }
    Ok(out)
}

/// When `sql` (a down script that just failed) fails on data — a NOT NULL, a CHECK, a
/// duplicate, a value that does not convert — rather than on the schema, says so, with the
/// generated row at fault where PostgreSQL names one; `None` when the failure is not about
/// data. Runs the script again in a transaction that is rolled back.
pub async fn explain_data_failure(
    client: &Client,
    schema: &str,
    sql: &str,
) -> anyhow::Result<Option<String>> {
    client
        .batch_execute("BEGIN")
        .await
        .pg(|| "re-running a script")?;
    let failed = client.batch_execute(sql).await.err();
    client
        .batch_execute("ROLLBACK")
        .await
        .pg(|| "re-running a script")?;
    let Some(e) = failed else { return Ok(None) };
    let Some(db) = e.as_db_error() else {
        return Ok(None);
    };
    let class = &db.code().code()[..2];
    if class != "22" && class != "23" {
        return Ok(None);
    }
    let at = (
        db.schema().unwrap_or(schema).to_string(),
        db.table().map(str::to_string),
        db.column().map(str::to_string),
    );
    let mut out = format!(
        "fails on the generated data, not on the schema: {}",
        PgError::with_values(e).message
    );
    if let (in_schema, Some(table), Some(column)) = at {
        let target = qualified(&in_schema, &table);
        let row = client
            .query_opt(
                &format!(
                    "SELECT r::text FROM {target} r WHERE {} IS NULL LIMIT 1",
                    quote_ident(&column)
                ),
                &[],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, String>(0));
        if let Some(row) = row {
            out.push_str(&format!("; a generated row of {table}: {row}"));
        }
    }
    out.push_str(
        "; the script must cope with rows like it (generated rows put NULL in nullable columns); --rows-skip TABLE leaves the table out of the data check",
    );
    Ok(Some(out))
}
