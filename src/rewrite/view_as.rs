//! `SET rowgate.view_as = 'user'`, `SET rowgate.view_as_token = '<jwt>'`
//! and their `RESET`: an admin session looks through a user's eyes (the
//! proxy switches the session's access; see `frontend::session`). This
//! module only recognizes the statements.

use sqlparser::ast::{
    ContextModifier, Expr, ObjectName, Reset, ResetStatement, Set, Statement, Value,
};

use super::Refusal;

/// The setting's name, as PostgreSQL folds it.
pub const SETTING: &str = "rowgate.view_as";
/// The setting that views as a signed token's user.
pub const TOKEN_SETTING: &str = "rowgate.view_as_token";

/// A statement rowgate answers itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answered {
    /// `SHOW rowgate.access`: the session's access, as `rowgate access`
    /// prints it.
    Access,
    /// `SELECT rowgate.explain('SQL')`: what would be forwarded for SQL.
    Explain(String),
}

/// `Some` when `sql` is one of the statements rowgate answers itself.
pub fn answered(sql: &str) -> Option<Answered> {
    use sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments, SelectItem, SetExpr};
    if !sql
        .as_bytes()
        .windows(8)
        .any(|w| w.eq_ignore_ascii_case(b"rowgate."))
    {
        return None;
    }
    let statements = super::parse(sql).ok()?;
    let [statement] = statements.as_slice() else {
        return None;
    };
    let is = |name: &ObjectName, what: &str| {
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident())
            .map(|i| i.value.to_ascii_lowercase())
            .collect();
        parts.len() == 2 && parts[0] == "rowgate" && parts[1] == what
    };
    match statement {
        Statement::ShowVariable { variable } => {
            let name = ObjectName::from(variable.clone());
            is(&name, "access").then_some(Answered::Access)
        }
        Statement::Query(q) => {
            if q.with.is_some() || q.order_by.is_some() || q.limit_clause.is_some() {
                return None;
            }
            let SetExpr::Select(select) = q.body.as_ref() else {
                return None;
            };
            if !select.from.is_empty() || select.selection.is_some() {
                return None;
            }
            let [SelectItem::UnnamedExpr(Expr::Function(f))] = select.projection.as_slice() else {
                return None;
            };
            if !is(&f.name, "explain") {
                return None;
            }
            let FunctionArguments::List(list) = &f.args else {
                return None;
            };
            match list.args.as_slice() {
                [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))] => match &v.value {
                    Value::SingleQuotedString(text)
                    | Value::DollarQuotedString(sqlparser::ast::DollarQuotedString {
                        value: text,
                        ..
                    }) => Some(Answered::Explain(text.clone())),
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    }
}

/// What a view-as statement asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewAs {
    /// Look as this user.
    Set(String),
    /// Look as the user of this signed token.
    Token(String),
    /// Back to the session's own access.
    Reset,
}

/// Which view-as setting `name` is, if one.
fn setting_of(name: &ObjectName) -> Option<&'static str> {
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(|i| i.value.to_ascii_lowercase())
        .collect();
    match parts.as_slice() {
        [a, b] if a == "rowgate" && b == "view_as" => Some(SETTING),
        [a, b] if a == "rowgate" && b == "view_as_token" => Some(TOKEN_SETTING),
        _ => None,
    }
}

fn is_setting(name: &ObjectName) -> bool {
    setting_of(name).is_some()
}

/// The text that stands for a statement mentioning `rowgate.view_as_token`
/// wherever it would be written (the audit log, rowgate's log, upstream):
/// the token replaced by its hash. Other texts are returned as they are.
pub fn redacted(sql: &str) -> std::borrow::Cow<'_, str> {
    if !sql
        .as_bytes()
        .windows(13)
        .any(|w| w.eq_ignore_ascii_case(b"view_as_token"))
    {
        return std::borrow::Cow::Borrowed(sql);
    }
    let named = match view_as(sql) {
        Some(Ok(ViewAs::Token(t))) => crate::tokens::token_hash(&t),
        Some(Ok(ViewAs::Reset)) => return std::borrow::Cow::Borrowed(sql),
        _ => crate::tokens::token_hash(sql),
    };
    std::borrow::Cow::Owned(format!("SET {TOKEN_SETTING} = '{named}'"))
}

/// Whether a text may be a view-as statement (a cheap test before
/// [`view_as`] parses it).
pub fn mentions(sql: &str) -> bool {
    mentions_body(sql.as_bytes())
}

/// [`mentions`] on a message's bytes.
pub fn mentions_body(body: &[u8]) -> bool {
    body.windows(7).any(|w| w.eq_ignore_ascii_case(b"view_as"))
}

/// A string constant of `text` that reads the same whatever
/// standard_conforming_strings is (an admin's session may have turned it
/// off).
pub fn escaped_literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// `Some` when `sql` sets or resets `rowgate.view_as`: what it asks, or
/// why it cannot be done. `None` for any other text.
pub fn view_as(sql: &str) -> Option<Result<ViewAs, Refusal>> {
    if !mentions(sql) {
        return None;
    }
    let statements = super::parse(sql).ok()?;
    let index = statements.iter().position(|s| match s {
        Statement::Set(Set::SingleAssignment { variable, .. }) => is_setting(variable),
        Statement::Set(Set::ParenthesizedAssignments { variables, .. }) => {
            variables.iter().any(is_setting)
        }
        Statement::Set(Set::MultipleAssignments { assignments }) => {
            assignments.iter().any(|a| is_setting(&a.name))
        }
        Statement::Reset(ResetStatement {
            reset: Reset::ConfigurationParameter(name),
        }) => is_setting(name),
        _ => false,
    })?;
    if statements.len() > 1 {
        return Some(Err(Refusal::unsupported(
            "SET rowgate.view_as together with other statements in one query",
        )));
    }
    Some(match &statements[index] {
        Statement::Set(Set::SingleAssignment {
            scope,
            values,
            variable,
            ..
        }) => {
            let setting = setting_of(variable).unwrap_or(SETTING);
            if matches!(scope, Some(ContextModifier::Local)) {
                return Some(Err(Refusal::unsupported(format!("SET LOCAL {setting}"))));
            }
            if setting == TOKEN_SETTING {
                return Some(match values.as_slice() {
                    [Expr::Value(v)] => match &v.value {
                        Value::SingleQuotedString(s) if s.is_empty() => Ok(ViewAs::Reset),
                        Value::SingleQuotedString(s) => Ok(ViewAs::Token(s.clone())),
                        _ => Err(Refusal::unsupported("this value of rowgate.view_as_token")),
                    },
                    [Expr::Identifier(i)]
                        if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default") =>
                    {
                        Ok(ViewAs::Reset)
                    }
                    _ => Err(Refusal::unsupported(
                        "this value of rowgate.view_as_token (a token is a string constant)",
                    )),
                });
            }
            match values.as_slice() {
                [Expr::Value(v)] => match &v.value {
                    Value::SingleQuotedString(s) if s.is_empty() => Ok(ViewAs::Reset),
                    Value::SingleQuotedString(s) => Ok(ViewAs::Set(s.clone())),
                    _ => Err(Refusal::unsupported("this value of rowgate.view_as")),
                },
                [Expr::Identifier(i)]
                    if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default") =>
                {
                    Ok(ViewAs::Reset)
                }
                [Expr::Identifier(i)] => Ok(ViewAs::Set(if i.quote_style.is_some() {
                    i.value.clone()
                } else {
                    i.value.to_ascii_lowercase()
                })),
                _ => Err(Refusal::unsupported("this value of rowgate.view_as")),
            }
        }
        Statement::Reset(_) => Ok(ViewAs::Reset),
        _ => Err(Refusal::unsupported(
            "SET rowgate.view_as together with other settings",
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_reset_are_recognized_however_written() {
        let set = |u: &str| Some(Ok(ViewAs::Set(u.to_string())));
        assert_eq!(
            view_as("SET rowgate.view_as = 'king_manager'"),
            set("king_manager")
        );
        assert_eq!(
            view_as("set ROWGATE.VIEW_AS to 'Mixed Case'"),
            set("Mixed Case")
        );
        assert_eq!(view_as("SET SESSION rowgate.view_as = apac"), set("apac"));
        assert_eq!(view_as("SET rowgate.view_as = \"CEO\""), set("CEO"));
        assert_eq!(view_as("SET rowgate.view_as = ceo;"), set("ceo"));
        assert_eq!(view_as("RESET rowgate.view_as"), Some(Ok(ViewAs::Reset)));
        assert_eq!(view_as("SET rowgate.view_as = ''"), Some(Ok(ViewAs::Reset)));
        assert_eq!(
            view_as("SET rowgate.view_as TO DEFAULT"),
            Some(Ok(ViewAs::Reset))
        );
    }

    #[test]
    fn a_token_to_view_as_is_recognized_and_never_written_out() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln";
        assert_eq!(
            view_as(&format!("SET rowgate.view_as_token = '{jwt}'")),
            Some(Ok(ViewAs::Token(jwt.into())))
        );
        assert_eq!(
            view_as("RESET ROWGATE.VIEW_AS_TOKEN"),
            Some(Ok(ViewAs::Reset))
        );
        assert!(matches!(
            view_as("SET rowgate.view_as_token = abc"),
            Some(Err(Refusal::Unsupported(_)))
        ));
        for sql in [
            format!("SET rowgate.view_as_token = '{jwt}'"),
            format!("SET LOCAL rowgate.view_as_token = '{jwt}'"),
            format!("set rowgate.VIEW_AS_TOKEN to '{jwt}'; SELECT 1"),
        ] {
            let shown = redacted(&sql);
            assert!(!shown.contains("c2ln") && !shown.contains("eyJ"), "{shown}");
            assert!(
                shown.starts_with("SET rowgate.view_as_token = 'sha256:"),
                "{shown}"
            );
        }
        assert_eq!(
            redacted("SET rowgate.view_as = 'x'"),
            "SET rowgate.view_as = 'x'"
        );
        assert_eq!(
            redacted("RESET rowgate.view_as_token"),
            "RESET rowgate.view_as_token"
        );
    }

    #[test]
    fn statements_rowgate_answers_are_recognized() {
        assert_eq!(answered("SHOW rowgate.access"), Some(Answered::Access));
        assert_eq!(answered("show ROWGATE.ACCESS;"), Some(Answered::Access));
        assert_eq!(
            answered("SELECT rowgate.explain('SELECT * FROM orders')"),
            Some(Answered::Explain("SELECT * FROM orders".into()))
        );
        assert_eq!(
            answered("select rowgate.explain($$SELECT 'x'$$)"),
            Some(Answered::Explain("SELECT 'x'".into()))
        );
        assert_eq!(answered("SHOW search_path"), None);
        assert_eq!(answered("SELECT rowgate.explain('a'), 1"), None);
        assert_eq!(answered("SELECT rowgate.explain(x) FROM t"), None);
        assert_eq!(answered("SHOW rowgate.access; SELECT 1"), None);
    }

    #[test]
    fn escaped_literals_keep_quotes_and_backslashes() {
        assert_eq!(escaped_literal(r"a'b\c"), r"E'a''b\\c'");
    }

    #[test]
    fn other_texts_are_not_view_as() {
        assert_eq!(view_as("SELECT 1"), None);
        assert_eq!(view_as("SET search_path = public"), None);
        assert_eq!(view_as("SELECT 'view_as'"), None);
        assert_eq!(
            view_as("SELECT set_config('rowgate.view_as', 'x', false)"),
            None
        );
        assert_eq!(view_as("SHOW rowgate.view_as"), None);
        assert_eq!(view_as("SET rowgate.view_as_other = 'x'"), None);
    }

    #[test]
    fn forms_rowgate_cannot_follow_are_refused() {
        for sql in [
            "SET LOCAL rowgate.view_as = 'x'",
            "SET rowgate.view_as = 'x'; SELECT 1",
            "SELECT 1; RESET rowgate.view_as",
            "SET rowgate.view_as = 1",
        ] {
            assert!(
                matches!(view_as(sql), Some(Err(Refusal::Unsupported(_)))),
                "{sql}"
            );
        }
    }
}
