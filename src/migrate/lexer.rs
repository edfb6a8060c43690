//! Splitting SQL scripts into top-level statements, as PostgreSQL's own scanner would.
//!
//! backstop owns the transaction a step runs in, so it must know where a script's top-level
//! statements begin: a `COMMIT` there would commit destructive SQL before its backup exists.
//! The lexer knows single-quoted strings (with `E''` backslash escapes), quoted identifiers,
//! dollar quotes, `--` and nested `/* */` comments, and SQL-standard function bodies
//! (`BEGIN ATOMIC … END`, whose inner semicolons do not end the statement). Only the start
//! of each statement is classified; nothing else is parsed.

/// One top-level statement of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Byte range in the script, from the first token to the terminating `;` (included when
    /// there is one).
    pub start: usize,
    pub end: usize,
    /// 1-based line of the first token.
    pub line: usize,
    /// The first two words, upper-cased (`["CREATE", "TABLE"]`).
    pub words: Vec<String>,
}

impl Statement {
    pub fn text<'a>(&self, sql: &'a str) -> &'a str {
        &sql[self.start..self.end]
    }

    fn word(&self, i: usize) -> &str {
        self.words.get(i).map_or("", String::as_str)
    }

    /// `BEGIN` or `START TRANSACTION`: opens a transaction block.
    pub fn is_begin(&self) -> bool {
        self.word(0) == "BEGIN" || (self.word(0) == "START" && self.word(1) == "TRANSACTION")
    }

    /// `COMMIT` or `END`: commits the transaction block.
    pub fn is_commit(&self) -> bool {
        matches!(self.word(0), "COMMIT" | "END") && self.word(1) != "PREPARED"
    }

    /// Any statement that starts, ends or hands over a transaction (savepoints are fine:
    /// they nest inside backstop's transaction).
    pub fn is_transaction_control(&self) -> bool {
        match self.word(0) {
            "BEGIN" | "COMMIT" | "END" | "ABORT" => true,
            "START" => self.word(1) == "TRANSACTION",
            "ROLLBACK" => self.word(1) != "TO",
            "PREPARE" => self.word(1) == "TRANSACTION",
            _ => false,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Normal,
    LineComment,
    BlockComment(u32),
    Quote { backslash: bool },
    Ident,
}

/// Splits `sql` into its top-level statements. Text after the last `;` that holds a token
/// is a statement too; comments and whitespace alone are not.
pub fn split(sql: &str) -> Vec<Statement> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut state = State::Normal;
    let mut line = 1;
    let mut i = 0;
    // The statement being read: start, line, words; `None` until its first token.
    let mut current: Option<(usize, usize, Vec<String>)> = None;
    // `BEGIN ATOMIC` bodies and the `CASE`s inside them.
    let (mut atomic, mut cases) = (0u32, 0u32);
    let mut last_word = String::new();
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
        }
        match state {
            State::LineComment => {
                if c == b'\n' {
                    state = State::Normal;
                }
                i += 1;
            }
            State::BlockComment(depth) => {
                if b[i..].starts_with(b"*/") {
                    state = if depth == 1 {
                        State::Normal
                    } else {
                        State::BlockComment(depth - 1)
                    };
                    i += 2;
                } else if b[i..].starts_with(b"/*") {
                    state = State::BlockComment(depth + 1);
                    i += 2;
                } else {
                    i += 1;
                }
            }
            State::Quote { backslash } => {
                if backslash && c == b'\\' {
                    if b.get(i + 1) == Some(&b'\n') {
                        line += 1;
                    }
                    i += 2;
                } else if c == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                    } else {
                        state = State::Normal;
                        i += 1;
                    }
                } else {
                    i += 1;
                }
            }
            State::Ident => {
                if c == b'"' {
                    if b.get(i + 1) == Some(&b'"') {
                        i += 2;
                    } else {
                        state = State::Normal;
                        i += 1;
                    }
                } else {
                    i += 1;
                }
            }
            State::Normal => {
                if c.is_ascii_whitespace() {
                    i += 1;
                    continue;
                }
                if b[i..].starts_with(b"--") {
                    state = State::LineComment;
                    i += 2;
                    continue;
                }
                if b[i..].starts_with(b"/*") {
                    state = State::BlockComment(1);
                    i += 2;
                    continue;
                }
                let stmt = current.get_or_insert_with(|| (i, line, Vec::new()));
                if c == b';' && atomic == 0 {
                    let (start, l, words) = current.take().expect("set above");
                    out.push(Statement {
                        start,
                        end: i + 1,
                        line: l,
                        words,
                    });
                    last_word.clear();
                    i += 1;
                    continue;
                }
                if c == b'\'' {
                    let backslash = last_word.eq_ignore_ascii_case("E")
                        && i > 0
                        && b[i - 1].eq_ignore_ascii_case(&b'e');
                    state = State::Quote { backslash };
                    last_word.clear();
                    i += 1;
                    continue;
                }
                if c == b'"' {
                    state = State::Ident;
                    last_word.clear();
                    i += 1;
                    continue;
                }
                if c == b'$' {
                    if let Some(tag_len) = dollar_tag(&b[i..]) {
                        let tag = &b[i..i + tag_len];
                        let body = i + tag_len;
                        let close = find(&b[body..], tag).map_or(b.len(), |p| body + p + tag_len);
                        line += b[i + 1..close].iter().filter(|&&x| x == b'\n').count();
                        i = close;
                        last_word.clear();
                        continue;
                    }
                }
                if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
                    let start = i;
                    while i < b.len()
                        && (b[i].is_ascii_alphanumeric()
                            || b[i] == b'_'
                            || b[i] == b'$'
                            || b[i] >= 0x80)
                    {
                        i += 1;
                    }
                    let word = sql[start..i].to_ascii_uppercase();
                    if stmt.2.len() < 2 {
                        stmt.2.push(word.clone());
                    }
                    match word.as_str() {
                        "ATOMIC" if last_word == "BEGIN" => atomic += 1,
                        "CASE" if atomic > 0 => cases += 1,
                        "END" if atomic > 0 => {
                            if cases > 0 {
                                cases -= 1;
                            } else {
                                atomic -= 1;
                            }
                        }
                        _ => {}
                    }
                    last_word = word;
                    continue;
                }
                last_word.clear();
                i += 1;
            }
        }
    }
    if let Some((start, l, words)) = current {
        out.push(Statement {
            start,
            end: sql.len(),
            line: l,
            words,
        });
    }
    out
}

/// The length of a dollar-quote tag (`$$`, `$body$`) at the start of `b`, if there is one.
fn dollar_tag(b: &[u8]) -> Option<usize> {
    let mut j = 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        if j == 1 && b[j].is_ascii_digit() {
            return None; // `$1` is a parameter
        }
        j += 1;
    }
    (b.get(j) == Some(&b'$')).then_some(j + 1)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Why a script's transaction control cannot be accepted, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misplaced {
    pub line: usize,
    pub statement: String,
}

/// What a script's own transaction control means for backstop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionControl {
    /// None at the top level.
    None,
    /// One `BEGIN` first and one `COMMIT`/`END` last, nothing else: a wrapper that
    /// [`strip_wrapper`] can remove, since backstop runs the script in its own transaction.
    Wrapper {
        begin_line: usize,
        commit_line: usize,
    },
    /// Anything else: the first statement that is in the way.
    Misplaced(Misplaced),
}

/// Classifies the top-level transaction control of `sql`.
pub fn transaction_control(sql: &str) -> TransactionControl {
    let stmts = split(sql);
    let control: Vec<&Statement> = stmts
        .iter()
        .filter(|s| s.is_transaction_control())
        .collect();
    let Some(first) = control.first() else {
        return TransactionControl::None;
    };
    let wrapped = control.len() == 2
        && stmts.first().is_some_and(|s| s.is_begin())
        && stmts.last().is_some_and(|s| s.is_commit())
        && stmts.len() > 2;
    if wrapped {
        return TransactionControl::Wrapper {
            begin_line: stmts[0].line,
            commit_line: stmts[stmts.len() - 1].line,
        };
    }
    // Name the first statement that does harm (a COMMIT or ROLLBACK); a BEGIN only when
    // there is nothing else.
    let culprit = control
        .iter()
        .find(|s| !s.is_begin())
        .copied()
        .unwrap_or(first);
    TransactionControl::Misplaced(Misplaced {
        line: culprit.line,
        statement: culprit.text(sql).trim_end_matches(';').trim().to_string(),
    })
}

/// `sql` with its first and last statement blanked (newlines kept, so line numbers in
/// server errors still point at the file's lines).
pub fn strip_wrapper(sql: &str) -> String {
    let stmts = split(sql);
    let (Some(first), Some(last)) = (stmts.first(), stmts.last()) else {
        return sql.to_string();
    };
    let blank = |s: &str| -> String {
        s.chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect()
    };
    format!(
        "{}{}{}{}{}",
        &sql[..first.start],
        blank(first.text(sql)),
        &sql[first.end..last.start],
        blank(last.text(sql)),
        &sql[last.end..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firsts(sql: &str) -> Vec<(usize, String)> {
        split(sql)
            .iter()
            .map(|s| (s.line, s.words.first().cloned().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn splits_where_postgres_would() {
        let cases: &[(&str, &[(usize, &str)])] = &[
            ("SELECT 1; SELECT 2", &[(1, "SELECT"), (1, "SELECT")]),
            ("-- BEGIN;\nSELECT 1; /* COMMIT; /* nested; */ still; */ COMMIT;", &[(2, "SELECT"), (2, "COMMIT")]),
            ("SELECT 'it''s; COMMIT;';\nEND;", &[(1, "SELECT"), (2, "END")]),
            ("SELECT E'a\\'; COMMIT;';\nCOMMIT;", &[(1, "SELECT"), (2, "COMMIT")]),
            ("SELECT \"we;ird\"\"; x\" FROM t;", &[(1, "SELECT")]),
            (
                "CREATE FUNCTION f() RETURNS trigger AS $body$\nBEGIN\n  NEW.x := now(); COMMIT;\nEND;\n$body$ LANGUAGE plpgsql;\nCOMMIT;",
                &[(1, "CREATE"), (6, "COMMIT")],
            ),
            ("DO $$ BEGIN PERFORM 1; END $$;\nROLLBACK;", &[(1, "DO"), (2, "ROLLBACK")]),
            ("SELECT $1, $2;\nBEGIN;", &[(1, "SELECT"), (2, "BEGIN")]),
            (
                "CREATE FUNCTION g(int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT CASE WHEN $1 > 0 THEN 1 ELSE 0 END;\n  SELECT 2;\nEND;\nCOMMIT;",
                &[(1, "CREATE"), (6, "COMMIT")],
            ),
            ("  \n-- only a comment\n", &[]),
        ];
        for (sql, want) in cases {
            let want: Vec<(usize, String)> =
                want.iter().map(|(l, w)| (*l, w.to_string())).collect();
            assert_eq!(firsts(sql), want, "{sql}");
        }
    }

    #[test]
    fn classifies_transaction_control() {
        let cases: &[(&str, TransactionControl)] = &[
            ("CREATE TABLE t (id int);", TransactionControl::None),
            (
                "SAVEPOINT a; DELETE FROM t; ROLLBACK TO SAVEPOINT a; RELEASE a;",
                TransactionControl::None,
            ),
            (
                "BEGIN;\nDROP TABLE t;\nCOMMIT;\n",
                TransactionControl::Wrapper {
                    begin_line: 1,
                    commit_line: 3,
                },
            ),
            (
                "start transaction;\nDROP TABLE t;\nend;",
                TransactionControl::Wrapper {
                    begin_line: 1,
                    commit_line: 3,
                },
            ),
            (
                "DROP TABLE a;\nCOMMIT;\nDROP TABLE b;",
                TransactionControl::Misplaced(Misplaced {
                    line: 2,
                    statement: "COMMIT".into(),
                }),
            ),
            (
                "BEGIN;\nDROP TABLE a;\nCOMMIT;\nBEGIN;\nDROP TABLE b;\nCOMMIT;",
                TransactionControl::Misplaced(Misplaced {
                    line: 3,
                    statement: "COMMIT".into(),
                }),
            ),
            (
                "BEGIN;\nDROP TABLE a;",
                TransactionControl::Misplaced(Misplaced {
                    line: 1,
                    statement: "BEGIN".into(),
                }),
            ),
            (
                "DROP TABLE a;\nROLLBACK;",
                TransactionControl::Misplaced(Misplaced {
                    line: 2,
                    statement: "ROLLBACK".into(),
                }),
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(&transaction_control(sql), want, "{sql}");
        }
    }

    #[test]
    fn stripping_keeps_lines_and_the_rest() {
        let sql = "-- head\nBEGIN;\nDROP TABLE t;\nCOMMIT;\n-- tail\n";
        let stripped = strip_wrapper(sql);
        assert_eq!(stripped.lines().count(), sql.lines().count());
        assert_eq!(transaction_control(&stripped), TransactionControl::None);
        assert_eq!(firsts(&stripped), [(3, "DROP".to_string())]);
        assert!(stripped.contains("-- head") && stripped.contains("-- tail"));
    }
}
