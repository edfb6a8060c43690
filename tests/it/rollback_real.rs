//! `rollback-test` on a schema shaped like real projects': CHECK constraints tying columns
//! together, a 1:1 table its trigger fills, an `updated_at` trigger, extension types (citext,
//! ltree), domains with CHECKs, an enum, arrays, jsonb, identity and generated columns, a
//! self-referencing foreign key, a partitioned table and a second schema, in scripts wrapped
//! in BEGIN … COMMIT.

use crate::common::*;
use crate::rollback_test::criterion;

const CORE_UP: &str = r#"BEGIN;
CREATE EXTENSION IF NOT EXISTS citext;
CREATE EXTENSION IF NOT EXISTS ltree;
CREATE TYPE follow_state AS ENUM ('pending', 'accepted', 'blocked');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE DOMAIN handle AS text CHECK (VALUE ~ '^[a-z]+$');
CREATE TABLE users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email citext NOT NULL UNIQUE,
    handle handle NOT NULL,
    karma positive_int NOT NULL DEFAULT 1,
    tags text[] NOT NULL DEFAULT '{}',
    settings jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE FUNCTION set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END $$;
CREATE TRIGGER users_updated_at BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TABLE profiles (
    user_id bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    bio text
);
CREATE FUNCTION make_profile() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO profiles (user_id) VALUES (NEW.id);
    RETURN NEW;
END $$;
CREATE TRIGGER users_profile AFTER INSERT ON users
    FOR EACH ROW EXECUTE FUNCTION make_profile();
CREATE TABLE follows (
    follower_id bigint NOT NULL REFERENCES users (id),
    followee_id bigint NOT NULL REFERENCES users (id),
    followed_at timestamptz,
    follow_state follow_state,
    CHECK ((followed_at IS NULL) = (follow_state IS NULL)),
    PRIMARY KEY (follower_id, followee_id)
);
CREATE TABLE categories (
    id serial PRIMARY KEY,
    parent_id integer REFERENCES categories (id),
    path ltree NOT NULL,
    name text NOT NULL
);
CREATE TABLE prices (
    id serial PRIMARY KEY,
    net numeric(10, 2) NOT NULL CHECK (net >= 0 AND net < 100000),
    gross numeric(10, 2) GENERATED ALWAYS AS (net * 1.2) STORED
);
CREATE TABLE events (
    id bigserial,
    happened_at timestamptz NOT NULL,
    payload jsonb,
    PRIMARY KEY (id, happened_at)
) PARTITION BY RANGE (happened_at);
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE events_rest PARTITION OF events DEFAULT;
COMMIT;
"#;

const CORE_DOWN: &str = r#"BEGIN;
DROP TABLE events;
DROP TABLE prices;
DROP TABLE categories;
DROP TABLE follows;
DROP TRIGGER users_profile ON users;
DROP FUNCTION make_profile();
DROP TABLE profiles;
DROP TABLE users;
DROP FUNCTION set_updated_at();
DROP DOMAIN handle;
DROP DOMAIN positive_int;
DROP TYPE follow_state;
DROP EXTENSION ltree;
DROP EXTENSION citext;
COMMIT;
"#;

fn realistic(db: &TestDb) -> Project {
    let p = Project::empty(&db.url);
    p.add_migration("001_core", CORE_UP, CORE_DOWN);
    p.add_migration(
        "002_user_details",
        "ALTER TABLE users ADD COLUMN nickname citext;\nALTER TABLE categories ADD COLUMN position int CHECK (position BETWEEN 1 AND 20);\n",
        "ALTER TABLE categories DROP COLUMN position;\nALTER TABLE users DROP COLUMN nickname;\n",
    );
    p.add_migration(
        "003_tag_categories",
        "CREATE TABLE user_categories (\n    user_id bigint NOT NULL REFERENCES users (id),\n    category_id integer NOT NULL REFERENCES categories (id),\n    since date NOT NULL DEFAULT current_date,\n    PRIMARY KEY (user_id, category_id)\n);\nCREATE SCHEMA audit;\nCREATE TABLE audit.logins (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES public.users (id), at timestamptz NOT NULL);\n",
        "DROP TABLE audit.logins;\nDROP SCHEMA audit;\nDROP TABLE user_categories;\n",
    );
    p
}

#[tokio::test]
async fn rollback_test_checks_every_table_of_a_realistic_schema() {
    let db = TestDb::new().await;
    let available: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_available_extensions WHERE name IN ('citext', 'ltree')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(available, 2, "contrib's citext and ltree must be installed");
    let p = realistic(&db);
    let r = p.run(&["rollback-test", "--rows", "100"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("result: PASS"), "{r}");
    assert!(!r.stdout.contains("left out of the data check"), "{r}");
    let (code, v) = p.json(&["rollback-test", "--rows", "100"]);
    assert_eq!(code, 0, "{v}");
    let data = criterion(&v, "data restored");
    assert_eq!(data["outcome"], "pass", "{v}");
    let mut checked: Vec<&str> = v["data_checked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    checked.sort();
    assert_eq!(
        checked,
        [
            "audit.logins",
            "categories",
            "events",
            "follows",
            "prices",
            "profiles",
            "user_categories",
            "users"
        ],
        "{v}"
    );
    assert!(v["data_skipped"].as_array().unwrap().is_empty(), "{v}");
    let how = |table: &str| -> (i64, String) {
        let t = v["data_checked"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == table)
            .unwrap();
        (
            t["rows"].as_i64().unwrap(),
            t["how"].as_str().unwrap().to_string(),
        )
    };
    // The trigger made one profile per user.
    assert_eq!(
        how("profiles"),
        (100, "made by triggers as other tables were filled".into())
    );
    assert_eq!(how("users").0, 100);
    assert_eq!(how("events").0, 100);
}

#[tokio::test]
async fn tables_it_cannot_fill_are_skipped_with_the_reason_and_the_rest_still_checked() {
    let db = TestDb::new().await;
    let p = realistic(&db);
    p.add_migration(
        "004_odd",
        // A domain no generated value meets, and a chain whose first row needs a row
        // before it.
        "CREATE DOMAIN isbn AS text CHECK (VALUE ~ '^97[89]-[0-9]{10}$' AND right(VALUE, 1) = 'X');\n\
         CREATE TABLE books (isbn isbn PRIMARY KEY, title text NOT NULL);\n\
         CREATE TABLE pairs (a bigint, b bigint, PRIMARY KEY (a, b));\n\
         CREATE TABLE chain (id int PRIMARY KEY, previous int NOT NULL REFERENCES chain (id));\n\
         CREATE TABLE reviews (id int PRIMARY KEY, book isbn REFERENCES books (isbn), body text NOT NULL);\n\
         CREATE TABLE editions (id int PRIMARY KEY, book isbn NOT NULL REFERENCES books (isbn));\n",
        "DROP TABLE editions;\nDROP TABLE reviews;\nDROP TABLE chain;\nDROP TABLE pairs;\nDROP TABLE books;\nDROP DOMAIN isbn;\n",
    );
    let (code, v) = p.json(&["rollback-test", "--rows", "50", "--rows-skip", "prices"]);
    assert_eq!(code, 0, "{v}");
    let skipped: Vec<(String, String)> = v["data_skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap().to_string(),
                t["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let reason = |table: &str| {
        skipped
            .iter()
            .find(|(t, _)| t == table)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{table} not skipped: {skipped:?}"))
    };
    assert!(reason("books").contains("isbn"), "{skipped:?}");
    assert!(reason("chain").contains("previous"), "{skipped:?}");
    assert_eq!(reason("prices"), "left out with --rows-skip");
    // Left out because books is: its foreign key cannot be NULL.
    assert!(
        reason("editions").contains("references") && reason("editions").contains("books"),
        "{skipped:?}"
    );
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    let data = criterion(&v, "data restored");
    assert_eq!(data["outcome"], "pass", "{v}");
    assert!(
        data["detail"]
            .as_str()
            .unwrap()
            .contains("4 table(s) left out"),
        "{data}"
    );
    assert!(v["data_checked"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["table"] == "pairs"));
    // A nullable foreign key into a table left out is filled with NULL, and checked.
    let reviews = v["data_checked"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "reviews")
        .unwrap_or_else(|| panic!("reviews not checked: {v}"));
    assert_eq!(reviews["rows"], 50, "{reviews}");
    let r = p.ok(&["rollback-test", "--rows", "50"]);
    assert!(r.stdout.contains("left out of the data check:"), "{r}");
    assert!(r.stdout.contains("  books: "), "{r}");
}

#[tokio::test]
async fn rows_are_made_to_satisfy_regular_expressions_in_lists_ranges_and_lengths() {
    let db = TestDb::new().await;
    let p = Project::empty(&db.url);
    p.add_migration(
        "001_accounts",
        "CREATE EXTENSION IF NOT EXISTS citext;
         CREATE DOMAIN email AS citext CHECK (VALUE ~ '^[^@\\s]+@[^@\\s]+$');
         CREATE DOMAIN locale AS text CHECK (VALUE ~ '^[a-z]{2}(-[A-Z]{2})?$');
         CREATE TABLE accounts (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             email email NOT NULL UNIQUE,
             slug text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$') CHECK (length(slug) BETWEEN 3 AND 40),
             locale locale NOT NULL DEFAULT 'en',
             phone text CHECK (phone ~ '^\\+[1-9][0-9]{7,14}$'),
             plan text NOT NULL CHECK (plan IN ('free', 'pro', 'team')),
             seats int NOT NULL CHECK (seats BETWEEN 1 AND 500),
             rating numeric CHECK (rating >= 0 AND rating <= 5),
             handle text NOT NULL CHECK (lower(handle) = handle AND length(handle) <= 30)
         );
         CREATE TABLE invitations (
             id serial PRIMARY KEY,
             account_id bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
             invitee email NOT NULL,
             role text NOT NULL CHECK (role IN ('owner', 'member', 'viewer'))
         );",
        "DROP TABLE invitations; DROP TABLE accounts; DROP DOMAIN locale; DROP DOMAIN email;",
    );
    let (code, v) = p.json(&["rollback-test", "--rows", "200"]);
    assert_eq!(code, 0, "{v:#}");
    assert!(v["data_skipped"].as_array().unwrap().is_empty(), "{v:#}");
    let checked: Vec<(String, i64)> = v["data_checked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap().to_string(),
                t["rows"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        checked,
        [
            ("accounts".to_string(), 200),
            ("invitations".to_string(), 200)
        ],
        "{v:#}"
    );
    assert_eq!(criterion(&v, "data restored")["outcome"], "pass", "{v:#}");
}

#[tokio::test]
async fn a_down_script_that_fails_only_on_the_generated_data_says_so_with_the_row() {
    let db = TestDb::new().await;
    let p = Project::empty(&db.url);
    p.add_migration(
        "001_notes",
        "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);\n",
        "DROP TABLE notes;\n",
    );
    p.add_migration(
        "002_optional_body",
        "ALTER TABLE notes ALTER COLUMN body DROP NOT NULL;\n",
        "ALTER TABLE notes ALTER COLUMN body SET NOT NULL;\n",
    );
    let (code, v) = p.json(&["rollback-test", "--rows", "20"]);
    assert_eq!(code, 3, "{v}");
    let down = criterion(&v, "downgrade succeeds");
    assert_eq!(down["outcome"], "fail", "{v}");
    let detail = down["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("002_optional_body: down.sql fails on the generated data"),
        "{detail}"
    );
    assert!(detail.contains("contains null values"), "{detail}");
    assert!(
        detail.contains("a generated row of notes: (7,)"),
        "{detail}"
    );
    // Without data the same migrations pass: the schema side is sound.
    let r = p.ok(&["rollback-test", "--rows", "0"]);
    assert!(r.stdout.contains("result: PASS"), "{r}");
}

#[tokio::test]
async fn each_difference_is_reported_once_at_the_step_that_made_it() {
    let db = TestDb::new().await;
    let p = Project::empty(&db.url);
    p.add_migration(
        "001_base",
        "CREATE TABLE t (id int PRIMARY KEY, a text);\nCREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\nBEGIN\n    RETURN 1;\nEND $$;\n",
        "DROP FUNCTION f();\nDROP TABLE t;\n",
    );
    for i in 2..=8 {
        let (up, down) = match i {
            // Forgets its index on the way down: still there at every step below it.
            3 => (
                "CREATE INDEX idx_leftover ON t (a);\n".to_string(),
                "SELECT 1;\n".to_string(),
            ),
            // Puts the function back indented with a tab: the same function.
            5 => (
                "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\nBEGIN\n  RETURN 1;\nEND $$;\n".to_string(),
                "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\nBEGIN\n\tRETURN 1;\nEND $$;\n".to_string(),
            ),
            _ => (
                format!("CREATE TABLE t{i} (id int);\n"),
                format!("DROP TABLE t{i};\n"),
            ),
        };
        p.add_migration(&format!("00{i}_step"), &up, &down);
    }
    let r = p.run(&["rollback-test", "--rows", "10"]);
    assert_eq!(r.code, 3, "{r}");
    assert!(
        r.stdout.contains(
            "migrations: 8: 001_base, 002_step, 003_step, … 006_step, 007_step, 008_step"
        ),
        "{r}"
    );
    let (_, v) = p.json(&["rollback-test", "--rows", "10"]);
    let diffs: Vec<&str> = v["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(diffs.len(), 1, "{diffs:#?}");
    assert!(
        diffs[0].starts_with("after reverting 003_step vs 002_step: + index t.idx_leftover"),
        "{diffs:#?}"
    );
    assert!(
        diffs[0].contains("the same after each of the next 1 step(s) down"),
        "{diffs:#?}"
    );
    assert_eq!(v["migrations"].as_array().unwrap().len(), 8);
}

#[tokio::test]
async fn columns_added_back_at_the_end_pass_with_allow_column_order() {
    let db = TestDb::new().await;
    let p = Project::empty(&db.url);
    p.add_migration(
        "001_t",
        "CREATE TABLE t (id int PRIMARY KEY, b text, c text);\n",
        "DROP TABLE t;\n",
    );
    p.add_migration(
        "002_drop_b",
        "ALTER TABLE t DROP COLUMN b;\n",
        "ALTER TABLE t ADD COLUMN b text;\n",
    );
    let r = p.run(&["rollback-test", "--rows", "10"]);
    assert_eq!(r.code, 3, "{r}");
    assert!(r.stdout.contains("~ column order of t"), "{r}");
    let r = p.ok(&["rollback-test", "--rows", "10", "--allow", "column-order"]);
    assert!(r.stdout.contains("result: PASS"), "{r}");
}
