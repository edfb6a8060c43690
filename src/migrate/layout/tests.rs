use super::*;

#[test]
fn versions_of_every_layout() {
    assert_eq!(version_number("001"), Some(1));
    assert_eq!(
        version_number("2019-02-26-002946"),
        Some(201902260029460000)
    );
    assert_eq!(
        version_number("2026-06-26-100902-0000"),
        Some(202606261009020000)
    );
    assert_eq!(version_number("2026-06-26-100902-00"), None);
    assert_eq!(version_number("2026-06-26-100902-0000-1"), None);
    assert!(version_number("2019-02-26-002946") < version_number("2026-06-26-100902-0000"));
    assert!(version_number("20190226002946") < version_number("2019-02-26-002946"));
    assert_eq!(version_number("20190226002946"), Some(20190226002946));
    assert_eq!(version_number("2019-02-26"), None);
    assert_eq!(version_number("V1"), None);
    assert_eq!(
        revision_number("2019-02-26-002946_create user"),
        Some(201902260029460000)
    );
    assert_eq!(
        revision_number("2026-06-26-100902-0000_add_x"),
        Some(202606261009020000)
    );
    assert_eq!(revision_number("000001_init"), Some(1));
    assert_eq!(revision_number("V1__init"), None);
    assert_eq!(revision_number("001_"), None);
}

#[test]
fn diesel_folders_order_as_diesel_orders_their_versions() {
    let mut names = [
        "2026-06-26-100902-0000_new_style",
        "20160815133237_plain",
        "2019-02-26-002946_dashed",
        "00000000000000_diesel_initial_setup",
        "20200101000000_plain_later",
        "2019-02-26-002946-0001_same_second",
    ];
    names.sort_by_key(|n| diesel_order(n));
    // diesel compares `version` as text: 2019… before 2020… whatever the form.
    assert_eq!(
        names,
        [
            "00000000000000_diesel_initial_setup",
            "20160815133237_plain",
            "2019-02-26-002946_dashed",
            "2019-02-26-002946-0001_same_second",
            "20200101000000_plain_later",
            "2026-06-26-100902-0000_new_style",
        ]
    );
}

#[test]
fn dbmate_sections_keep_their_line_numbers() {
    let text = "-- migrate:up\ncreate table a (id int);\n\n-- migrate:down transaction:false\ndrop table a;\n";
    let up = section(text, "-- migrate:up");
    let down = section(text, "-- migrate:down");
    assert_eq!(up.lines().nth(1), Some("create table a (id int);"));
    assert!(!up.contains("drop"));
    assert_eq!(down.lines().nth(4), Some("drop table a;"));
    assert!(!down.contains("create"));
}

#[test]
fn long_lists_are_cut() {
    let names: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
    assert_eq!(list(&names), "f0, f1, f2, f3, f4 and 3 more");
}
