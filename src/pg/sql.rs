//! Quoting for the SQL backstop builds: every identifier is quoted, always.

/// Quotes an SQL identifier, as `quote_ident` does, but always.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// Quotes a string literal for the rare statement that cannot take parameters (SET, CREATE DATABASE).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
        assert_eq!(qualified("public", "tasks"), r#""public"."tasks""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
