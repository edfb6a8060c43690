//! The rules of reading Alembic's output, without Python.

use super::*;

const UP: &str = "BEGIN;\n\nCREATE TABLE alembic_version (\n    version_num VARCHAR(32) NOT NULL\n);\n\n-- Running upgrade  -> 001\n\nCREATE TABLE tasks (id int);\n\nINSERT INTO alembic_version (version_num) VALUES ('001');\n\n-- Running upgrade 001 -> b2\n\nALTER TABLE tasks ADD COLUMN p int;\n\nCOMMIT;\n\nCREATE INDEX CONCURRENTLY i ON tasks (p);\n\nBEGIN;\n\nUPDATE alembic_version SET version_num='b2' WHERE alembic_version.version_num = '001';\n\nCOMMIT;\n";
const DOWN: &str = "BEGIN;\n\n-- Running downgrade b2 -> 001\n\nALTER TABLE tasks DROP COLUMN p;\n\nUPDATE alembic_version SET version_num='001' WHERE alembic_version.version_num = 'b2';\n\n-- Running downgrade 001 -> \n\nDROP TABLE tasks;\n\nDELETE FROM alembic_version WHERE alembic_version.version_num = '001';\n\nCOMMIT;\n";

fn history(dir: &Path) -> Vec<HistoryEntry> {
    let text = format!(
        "Rev: b2 (head)\nParent: 001\nPath: {d}/b2_p.py\n\n    p\n\nRev: 001\nParent: <base>\nPath: {d}/001_init.py\n",
        d = dir.display()
    );
    parse_history(&text)
}

#[test]
fn splits_at_alembics_markers() {
    let up = split_output(UP, "upgrade");
    assert!(up.preamble.starts_with("CREATE TABLE alembic_version"));
    assert_eq!(up.chunks.len(), 2);
    assert_eq!(up.chunks[0].from, Vec::<String>::new());
    assert_eq!(up.chunks[0].to, ["001"]);
    assert!(!up.chunks[0].no_transaction);
    assert!(up.chunks[1].no_transaction, "the autocommit block");
    assert!(!up.chunks[1].sql.contains("COMMIT") && !up.chunks[1].sql.contains("BEGIN"));
    assert!(up.chunks[1].sql.contains("UPDATE alembic_version"));
    let down = split_output(DOWN, "downgrade");
    assert_eq!(down.chunks[1].from, ["001"]);
    assert!(!down.chunks[1].no_transaction);
    assert!(!down.chunks[1].sql.contains("COMMIT"));
}

#[test]
fn history_with_merges() {
    let h = parse_history(
        "Rev: m (mergepoint)\nMerges: a, b\nPath: /p/m.py\n\nRev: a\nParent: r1\nPath: /p/a.py\n\nRev: r1 (branchpoint)\nParent: <base>\nBranches into: a, b\nPath: /p/r1.py\n",
    );
    assert_eq!(h[0].parents, ["a", "b"]);
    assert!(!h[0].head);
    assert_eq!(h[2].parents, Vec::<String>::new());
    assert_eq!(h[1].path, PathBuf::from("/p/a.py"));
}

#[test]
fn assembles_and_refuses_what_cannot_render_offline() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("001_init.py"), "def upgrade():\n    pass\n").unwrap();
    std::fs::write(
        t.path().join("b2_p.py"),
        "def upgrade():\n    # op.get_bind() is mentioned in a comment only\n    pass\n",
    )
    .unwrap();
    let r = assemble(t.path(), &history(t.path()), UP, DOWN, Duration::ZERO).unwrap();
    let ids: Vec<&str> = r.revisions.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["001", "b2"]);
    assert!(r
        .version_table_ddl
        .starts_with("CREATE TABLE IF NOT EXISTS alembic_version ("));
    assert!(r.revisions[1].down.sql.contains("DROP COLUMN p"));

    std::fs::write(
        t.path().join("b2_p.py"),
        "def upgrade():\n    conn = op.get_bind()\n    rows = conn.execute(sa.text('select 1'))\n",
    )
    .unwrap();
    let e = assemble(t.path(), &history(t.path()), UP, DOWN, Duration::ZERO)
        .unwrap_err()
        .to_string();
    assert!(e.contains("revision b2 cannot be rendered offline"), "{e}");
    assert!(e.contains("b2_p.py:2"), "{e}");
}

#[test]
fn failures_point_into_the_project() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().canonicalize().unwrap();
    let stderr = format!(
        "Traceback (most recent call last):\n  File \"/usr/lib/python3/site-packages/alembic/command.py\", line 10, in upgrade\n  File \"{}/alembic/versions/001_x.py\", line 7, in upgrade\n    op.create_tabel('x')\nAttributeError: module 'alembic.op' has no attribute 'create_tabel'\n",
        p.display()
    );
    let e = explain_failure(&stderr, &p);
    assert!(e.starts_with("AttributeError: module"), "{e}");
    assert!(e.ends_with("001_x.py:7)"), "{e}");
}

#[test]
fn urls_in_alembics_messages_lose_their_passwords() {
    assert_eq!(
        without_passwords("Could not parse SQLAlchemy URL from string 'postgresql+asyncpg://app:s3cr3t@db:5432/x?ssl=require'"),
        "Could not parse SQLAlchemy URL from string 'postgresql+asyncpg://app:***@db:5432/x?ssl=require'"
    );
    assert_eq!(
        without_passwords("see https://alembic.sqlalchemy.org/"),
        "see https://alembic.sqlalchemy.org/"
    );
    assert_eq!(
        without_passwords("postgresql://u@h/db"),
        "postgresql://u@h/db"
    );
}
