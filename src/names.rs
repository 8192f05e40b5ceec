//! Relation names as PostgreSQL resolves them: unquoted identifiers fold to
//! lower case, quoted ones are exact, and printing quotes whatever needs it.

use std::fmt;

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};

/// A schema-qualified relation name, both parts already folded.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelName {
    pub schema: String,
    pub name: String,
}

impl RelName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// The name as an AST node, quoted where PostgreSQL needs quotes.
    pub fn to_object_name(&self) -> ObjectName {
        ObjectName(vec![
            ObjectNamePart::Identifier(ident(&self.schema)),
            ObjectNamePart::Identifier(ident(&self.name)),
        ])
    }
}

impl fmt::Display for RelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", ident(&self.schema), ident(&self.name))
    }
}

/// The identifier PostgreSQL means by `ident`: unquoted names fold ASCII
/// letters to lower case (as `downcase_identifier` does for UTF-8).
pub fn fold(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    }
}

/// An AST identifier for the exact name `name`, quoted unless it is a plain
/// lower-case identifier that is not a reserved word.
pub fn ident(name: &str) -> Ident {
    if needs_quotes(name) {
        Ident::with_quote('"', name)
    } else {
        Ident::new(name)
    }
}

fn needs_quotes(name: &str) -> bool {
    let mut chars = name.chars();
    let plain_start = matches!(chars.next(), Some('a'..='z' | '_'));
    let plain_rest = chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '$'));
    !(plain_start && plain_rest) || RESERVED.binary_search(&name).is_ok()
}

/// PostgreSQL's reserved key words (and the ones that cannot be column or
/// table names), sorted for binary search.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// Parses a name as written in a policy file: `schema.table`, with each part
/// either a plain identifier (folded) or a double-quoted one (exact).
/// Returns the parts, or a message saying what is wrong.
pub fn parse_dotted(text: &str) -> Result<Vec<Part>, String> {
    let (parts, rest) = parse_dotted_prefix(text.trim())?;
    if !rest.is_empty() {
        return Err(format!("unexpected `{rest}` after the name"));
    }
    Ok(parts)
}

/// One part of a dotted name in a policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Name(String),
    Star,
}

/// Splits `text` into a leading name and what follows it, for callers that
/// read something after a name (as `references: schema.table(column)` does).
pub fn parse_dotted_prefix(text: &str) -> Result<(Vec<Part>, &str), String> {
    let mut parts = Vec::new();
    let mut rest = text.trim_start();
    loop {
        let (part, after) = parse_part(rest)?;
        parts.push(part);
        rest = after.trim_start();
        match rest.strip_prefix('.') {
            Some(after_dot) => rest = after_dot.trim_start(),
            None => return Ok((parts, rest)),
        }
    }
}

fn parse_part(text: &str) -> Result<(Part, &str), String> {
    if let Some(rest) = text.strip_prefix('*') {
        return Ok((Part::Star, rest));
    }
    if let Some(quoted) = text.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if quoted[i + 1..].starts_with('"') {
                    value.push('"');
                    chars.next();
                } else {
                    if value.is_empty() {
                        return Err("a quoted identifier cannot be empty".into());
                    }
                    return Ok((Part::Name(value), &quoted[i + 1..]));
                }
            } else {
                value.push(c);
            }
        }
        return Err("a quoted identifier is not closed".into());
    }
    let end = text
        .char_indices()
        .find(|&(i, c)| !(c.is_alphanumeric() || c == '_' || (i > 0 && c == '$')))
        .map_or(text.len(), |(i, _)| i);
    let word = &text[..end];
    match word.chars().next() {
        None => Err(if text.is_empty() {
            "a name is missing".into()
        } else {
            format!("`{text}` is not a valid identifier")
        }),
        Some(c) if c.is_ascii_digit() => Err(format!("`{word}` is not a valid identifier")),
        Some(_) => Ok((Part::Name(word.to_ascii_lowercase()), &text[end..])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_list_is_sorted() {
        assert!(RESERVED.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn quoting() {
        assert_eq!(ident("orders").to_string(), "orders");
        assert_eq!(ident("Orders").to_string(), "\"Orders\"");
        assert_eq!(ident("user").to_string(), "\"user\"");
        assert_eq!(ident("a b").to_string(), "\"a b\"");
        assert_eq!(ident("x\"y").to_string(), "\"x\"\"y\"");
        assert_eq!(
            RelName::new("public", "order").to_string(),
            "public.\"order\""
        );
    }

    #[test]
    fn dotted_names() {
        use Part::*;
        assert_eq!(
            parse_dotted("Public.Orders").unwrap(),
            vec![Name("public".into()), Name("orders".into())]
        );
        assert_eq!(
            parse_dotted("\"Sales\".\"Re\"\"turns\"").unwrap(),
            vec![Name("Sales".into()), Name("Re\"turns".into())]
        );
        assert_eq!(parse_dotted("hr.*").unwrap(), vec![Name("hr".into()), Star]);
        assert!(parse_dotted("public.").is_err());
        assert!(parse_dotted("public.orders x").is_err());
        assert!(parse_dotted("\"open").is_err());
        assert!(parse_dotted("1abc").is_err());
        let (parts, rest) = parse_dotted_prefix("public.countries(id)").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(rest, "(id)");
    }
}
