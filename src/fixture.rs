//! Generated rows for `rollback-test`: every table of a schema filled with N rows that respect
//! column types, NOT NULL, foreign keys and (mostly) uniqueness, with the values that break
//! naive CSV handling — NULLs, quotes, commas, newlines and non-ASCII text.

use std::collections::BTreeMap;

use anyhow::Context;
use tokio_postgres::Client;

use crate::pg::catalog::user_tables;
use crate::pg::{qualified, quote_ident, quote_literal, PgContext};

struct Column {
    name: String,
    sql_type: String,
    typname: String,
    category: String,
    nullable: bool,
    /// serial, identity or generated: left to the database.
    automatic: bool,
    has_default: bool,
    /// (parent table, parent column) for a single-column foreign key.
    references: Option<(String, String)>,
}

/// Fills every table of `schema` with `rows` rows, parents before children.
pub async fn fill(client: &Client, schema: &str, rows: u64) -> anyhow::Result<Vec<String>> {
    let tables: Vec<(u32, String)> = user_tables(client, schema)
        .await?
        .into_iter()
        .filter(|r| !r.is_partition)
        .map(|r| (r.oid, r.name))
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
    let mut order: Vec<(u32, String)> = Vec::new();
    let mut remaining = tables.clone();
    while !remaining.is_empty() {
        let i = remaining
            .iter()
            .position(|(oid, _)| {
                edges
                    .iter()
                    .filter(|(c, p)| c == oid && tables.iter().any(|(t, _)| t == p))
                    .all(|(_, p)| order.iter().any(|(o, _)| o == p))
            })
            .unwrap_or(0);
        order.push(remaining.remove(i));
    }
    let mut filled = Vec::new();
    for (oid, name) in order {
        let columns = columns(client, oid).await?;
        let mut names = Vec::new();
        let mut exprs = Vec::new();
        for c in &columns {
            if c.automatic {
                continue;
            }
            match expression(c, schema) {
                Some(e) => {
                    names.push(quote_ident(&c.name));
                    exprs.push(e);
                }
                None if c.nullable || c.has_default => {}
                None => anyhow::bail!(
                    "cannot generate values of type {} for column {name}.{}; rollback-test --rows 0 skips the data check",
                    c.sql_type,
                    c.name
                ),
            }
        }
        let target = qualified(schema, &name);
        let sql = if names.is_empty() {
            format!("INSERT INTO {target} SELECT FROM generate_series(1, {rows}) g")
        } else {
            format!(
                "INSERT INTO {target} ({}) SELECT {} FROM generate_series(1, {rows}) g",
                names.join(", "),
                exprs.join(", ")
            )
        };
        client
            .batch_execute(&sql)
            .await
            .pg(|| format!("filling table {name} with generated rows"))?;
        filled.push(name);
    }
    Ok(filled)
}

async fn columns(client: &Client, oid: u32) -> anyhow::Result<Vec<Column>> {
    let fks: BTreeMap<i16, (String, String)> = client
        .query(
            "SELECT con.conkey[1], pc.relname::text, pa.attname::text
             FROM pg_catalog.pg_constraint con
             JOIN pg_catalog.pg_class pc ON pc.oid = con.confrelid
             JOIN pg_catalog.pg_attribute pa ON pa.attrelid = con.confrelid AND pa.attnum = con.confkey[1]
             WHERE con.contype = 'f' AND con.conrelid = $1 AND array_length(con.conkey, 1) = 1",
            &[&oid],
        )
        .await
        .pg(|| "reading foreign keys")?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    Ok(client
        .query(
            "SELECT a.attnum, a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), t.typname::text,
                    t.typcategory::text, NOT a.attnotnull,
                    a.attidentity <> '' OR a.attgenerated <> ''
                      OR coalesce(pg_catalog.pg_get_expr(d.adbin, d.adrelid), '') LIKE 'nextval(%',
                    d.adbin IS NOT NULL
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
        })
        .collect())
}

/// An SQL expression over `g` (1..N) for one column, or `None` for types it cannot make up.
fn expression(c: &Column, schema: &str) -> Option<String> {
    if let Some((table, column)) = &c.references {
        let parent = qualified(schema, table);
        let col = quote_ident(column);
        return Some(format!(
            "(SELECT {col} FROM {parent} ORDER BY {col} OFFSET ((g - 1) % greatest((SELECT count(*) FROM {parent}), 1)) LIMIT 1)"
        ));
    }
    let value = match (c.category.as_str(), c.typname.as_str()) {
        (_, "int2") => "(g % 32000)".to_string(),
        ("N", "int4" | "int8" | "oid") => "g".to_string(),
        ("N", _) => "(g * 1.25)".to_string(),
        ("S", _) => format!(
            "{} || g || E' \"quoted\", comma\\nnew line, tab\\t, caf\u{e9} \u{1f980}'",
            quote_literal("row ")
        ),
        ("B", _) => "(g % 2 = 0)".to_string(),
        ("D", "date") => "(date '2026-01-01' + g::int)".to_string(),
        ("D", "time" | "timetz") => {
            "(time '00:00:00.000001' + g * interval '1 second')".to_string()
        }
        ("D", _) => {
            "(timestamptz '2026-01-01 00:00:00.123456+00' + g * interval '1 minute 1 microsecond')"
                .to_string()
        }
        ("T", _) => "(g * interval '1 minute 2 seconds')".to_string(),
        ("U", "uuid") => "md5(g::text)::uuid".to_string(),
        ("U", "json" | "jsonb") => "json_build_object('g', g, 'text', 'a \"q\", b')".to_string(),
        ("U", "bytea") => "decode(md5(g::text), 'hex')".to_string(),
        ("E", _) => format!(
            "(enum_range(NULL::{t}))[1 + (g % array_length(enum_range(NULL::{t}), 1))::int]",
            t = c.sql_type
        ),
        ("I", "inet") => "('10.0.0.0'::inet + g)".to_string(),
        ("A", _) => "'{}'".to_string(),
        _ => return None,
    };
    let cast = format!("({value})::{}", c.sql_type);
    Some(if c.nullable {
        format!("CASE WHEN g % 7 = 0 THEN NULL ELSE {cast} END")
    } else {
        cast
    })
}

/// md5 over every row of every table (rows ordered by their text), for before/after checks.
pub async fn fingerprint(
    client: &Client,
    schema: &str,
    tables: &[String],
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for t in tables {
        let md5: String = client
            .query_one(
                &format!(
                    "SELECT count(*) || ':' || coalesce(md5(string_agg(r::text, E'\\n' ORDER BY r::text)), '') FROM {} r",
                    qualified(schema, t)
                ),
                &[],
            )
            .await
            .pg(|| format!("fingerprinting {t}"))?
            .get(0);
        out.insert(t.clone(), md5);
    }
    Ok(out)
}
