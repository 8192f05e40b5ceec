//! Statement classification for members and analysts: an allowlist. Reads
//! are rewritten; transaction control, SHOW, a short list of harmless SETs,
//! and the statements that wrap a read (PREPARE, EXECUTE, DECLARE, FETCH,
//! EXPLAIN without ANALYZE) are allowed; everything else is refused.

use sqlparser::ast::{
    CopySource, CopyTarget, Declare, Expr, ObjectName, Reset, ResetStatement, Set, SetExpr,
    Statement, UnaryOperator, Value,
};

use super::tables::{self, Scope, State};
use super::{Context, Refusal};
use crate::names::fold;

/// Settings members and analysts may change: formatting, timeouts, the
/// planner's JIT and client identification. Never `role`,
/// `standard_conforming_strings`, `row_security` or `session_authorization`:
/// the rewrite relies on them. `client_encoding` only to UTF8.
/// `search_path` is the session's: rowgate resolves names along it, and the
/// proxy keeps it equal upstream.
pub const SETTABLE: &[&str] = &[
    "application_name",
    "bytea_output",
    "client_encoding",
    "client_min_messages",
    "datestyle",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "extra_float_digits",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "intervalstyle",
    "jit",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "lock_timeout",
    "search_path",
    "statement_timeout",
    "timezone",
    "transaction_isolation",
    "transaction_read_only",
];

/// A search path's text as PostgreSQL reads the setting: names separated
/// by commas, each double-quoted (exact) or bare (folded to lower case).
/// `None` when it is not such a list.
pub fn parse_path_text(text: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut name = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        name.push('"');
                    }
                    '"' => break,
                    c => name.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                name.push(c.to_ascii_lowercase());
                chars.next();
            }
            if name.is_empty() {
                // An empty text is an empty path.
                return (out.is_empty() && chars.peek().is_none()).then_some(out);
            }
        }
        out.push(name);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(out),
            Some(',') => continue,
            Some(_) => return None,
        }
    }
}

/// A search path's entries as the member's session means them upstream:
/// `$user` is the member's name (upstream it would name the upstream role).
pub fn path_for_member(entries: &[String], user: &str) -> Vec<String> {
    entries
        .iter()
        .map(|e| {
            if e == "$user" {
                user.to_string()
            } else {
                e.clone()
            }
        })
        .collect()
}

/// A search path's text, as `set_config` and `SHOW` spell it.
pub fn path_text(entries: &[String]) -> String {
    entries
        .iter()
        .map(|s| crate::names::ident(s).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The schema names a `SET search_path` lists (`None` for `DEFAULT`).
pub(crate) fn set_path_entries(values: &[Expr]) -> Result<Option<Vec<String>>, Refusal> {
    let entries: Option<Vec<String>> = values
        .iter()
        .map(|v| match v {
            Expr::Identifier(i) if i.quote_style.is_none() => Some(fold(i)),
            Expr::Identifier(i) => Some(i.value.clone()),
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let entries = entries.ok_or_else(|| Refusal::Setting("search_path".into()))?;
    if let [only] = entries.as_slice() {
        if only == "default" && matches!(&values[0], Expr::Identifier(i) if i.quote_style.is_none())
        {
            return Ok(None);
        }
    }
    Ok(Some(entries))
}

/// Settings PostgreSQL shows only to superusers (server paths and commands);
/// the upstream role may be one, so members and analysts may not SHOW them.
/// `SHOW ALL` would list them too.
pub const SHOW_DENIED: &[&str] = &[
    "all",
    "archive_cleanup_command",
    "archive_command",
    "config_file",
    "data_directory",
    "dynamic_library_path",
    "external_pid_file",
    "hba_file",
    "ident_file",
    "log_directory",
    "primary_conninfo",
    "recovery_end_command",
    "restore_command",
    "ssl_ca_file",
    "ssl_cert_file",
    "ssl_crl_dir",
    "ssl_crl_file",
    "ssl_key_file",
    "ssl_passphrase_command",
];

pub(crate) fn check(
    statement: &mut Statement,
    cx: &Context,
    state: &mut State,
) -> Result<(), Refusal> {
    match statement {
        // A read-write member's write statement under a WITH.
        Statement::Query(query)
            if super::writes::writes(cx)
                && matches!(
                    query.body.as_ref(),
                    SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_)
                )
                && query.with.is_some() =>
        {
            super::writes::rewrite_under_with(query, cx)
        }
        Statement::Query(query) => tables::rewrite_query(query, cx, &Scope::ROOT, state),

        Statement::StartTransaction {
            statements,
            exception,
            ..
        } => {
            if statements.is_empty() && exception.is_none() {
                Ok(())
            } else {
                Err(Refusal::unsupported("BEGIN ... END blocks"))
            }
        }
        Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => Ok(()),

        Statement::ShowVariable { variable } => {
            let name = variable
                .iter()
                .map(|i| i.value.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(" ");
            let privileged = cx
                .catalog
                .privileged_settings()
                .is_some_and(|p| p.contains(&name));
            if privileged || SHOW_DENIED.contains(&name.as_str()) {
                Err(Refusal::Show(name))
            } else {
                Ok(())
            }
        }
        Statement::Set(set) => check_set(set, cx),
        Statement::Reset(ResetStatement { reset }) => match reset {
            Reset::ConfigurationParameter(name) => {
                // The search path resets to the pinned one, set at startup.
                let name = setting_name(name)?;
                if name == "client_encoding" {
                    return Err(Refusal::Setting(name));
                }
                Ok(())
            }
            // Settings go back to the session's startup values, which hold
            // the pinned ones (`role` and `session_authorization` are not
            // reset by it).
            Reset::ALL => Ok(()),
            Reset::SessionAuthorization => Err(Refusal::statement("RESET SESSION AUTHORIZATION")),
        },

        Statement::Prepare { name, .. } if super::is_reserved_name(&name.value) => {
            Err(Refusal::Reserved(name.value.clone()))
        }
        Statement::Deallocate { name, .. } if super::is_reserved_name(&name.value) => {
            Err(Refusal::Reserved(name.value.clone()))
        }
        Statement::Execute {
            name: Some(name), ..
        } if super::is_reserved_name(&name.to_string().replace('"', "")) => {
            Err(Refusal::Reserved(name.to_string()))
        }
        // A change of the search path runs when the statement is executed
        // or fetched, later: the proxy follows changes where they are sent.
        Statement::Prepare { statement, .. } if super::path_change(statement).is_some() => Err(
            Refusal::unsupported("a prepared statement that changes search_path"),
        ),
        Statement::Declare { stmts }
            if stmts.iter().any(|d| {
                d.for_query
                    .as_ref()
                    .is_some_and(|q| super::path_change(&Statement::Query(q.clone())).is_some())
            }) =>
        {
            Err(Refusal::unsupported("a cursor that changes search_path"))
        }
        Statement::Prepare {
            statement,
            data_types,
            ..
        } => match statement.as_mut() {
            inner @ Statement::Query(_) => check(inner, cx, state),
            inner @ (Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_))
                if super::writes::writes(cx) =>
            {
                super::writes::declare_parameters(inner, data_types)?;
                super::writes::rewrite(inner, cx)
            }
            other => Err(Refusal::statement(format!("PREPARE of {}", kind(other)))),
        },
        Statement::Execute {
            name: Some(_),
            parameters,
            immediate: false,
            into,
            using,
            output: false,
            default: false,
            ..
        } if into.is_empty() && using.is_empty() => tables::rewrite_node(parameters, cx, state),
        Statement::Deallocate { .. } => Ok(()),

        Statement::Declare { stmts } => {
            for Declare {
                for_query,
                assignment,
                ..
            } in stmts.iter_mut()
            {
                if assignment.is_some() {
                    return Err(Refusal::unsupported("DECLARE with an assignment"));
                }
                match for_query {
                    Some(query) => tables::rewrite_query(query, cx, &Scope::ROOT, state)?,
                    None => return Err(Refusal::unsupported("DECLARE without a query")),
                }
            }
            Ok(())
        }
        Statement::Fetch { into: None, .. } | Statement::Close { .. } => Ok(()),
        // Members cannot LISTEN; stopping is harmless (pools send it).
        Statement::UNLISTEN { .. } => Ok(()),

        Statement::Explain {
            analyze,
            statement,
            options,
            ..
        } => {
            let analyze_option = options.iter().flatten().any(|o| {
                matches!(fold(&o.name).as_str(), "analyze" | "analyse") && !is_false(o.arg.as_ref())
            });
            if *analyze || analyze_option {
                return Err(Refusal::statement(
                    "EXPLAIN ANALYZE (it runs the statement and reports rows the filters removed)",
                ));
            }
            match statement.as_mut() {
                inner @ Statement::Query(_) => check(inner, cx, state)?,
                other => return Err(Refusal::statement(format!("EXPLAIN of {}", kind(other)))),
            }
            // A fence leaves the conditions outside it to be estimated with
            // statistics of every row, hidden ones included; native RLS
            // gives a condition that is not leakproof none.
            if state.fenced_any {
                return Err(Refusal::Explain);
            }
            Ok(())
        }

        Statement::Copy {
            source,
            to: true,
            target: CopyTarget::Stdout,
            values,
            ..
        } if values.is_empty() => {
            if let CopySource::Table {
                table_name,
                columns,
            } = source
            {
                // `COPY t` reads t's own rows only; `SELECT ... FROM t`
                // would read its children's too.
                let parts: Vec<String> = table_name
                    .0
                    .iter()
                    .filter_map(|p| p.as_ident())
                    .map(fold)
                    .collect();
                let rel = match parts.as_slice() {
                    [name] => super::catalog::resolve(cx.catalog, cx.search_path, name),
                    [schema, name] => {
                        Some(crate::names::RelName::new(schema.clone(), name.clone()))
                    }
                    _ => None,
                };
                if let Some(rel) = rel {
                    if cx.catalog.has_children(&rel.schema, &rel.name) == Some(true) {
                        return Err(Refusal::unsupported(
                            "COPY of a table with inheritance children or partitions (COPY (SELECT * FROM t) TO STDOUT reads the children's rows too)",
                        ));
                    }
                }
                // `COPY t (cols) TO STDOUT` reads like `COPY (SELECT cols
                // FROM t) TO STDOUT`, which is what gets rewritten.
                let cols = if columns.is_empty() {
                    "*".to_string()
                } else {
                    columns
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let text = format!("SELECT {cols} FROM {table_name}");
                let query = match super::parse(&text)?.pop() {
                    Some(Statement::Query(q)) => q,
                    _ => return Err(Refusal::unsupported("this COPY source")),
                };
                *source = CopySource::Query(query);
            }
            match source {
                CopySource::Query(query) => tables::rewrite_query(query, cx, &Scope::ROOT, state),
                CopySource::Table { .. } => Err(Refusal::unsupported("this COPY source")),
            }
        }
        Statement::Copy { .. } => Err(Refusal::statement(
            "COPY other than COPY ... TO STDOUT (COPY FROM, to a file or a program)",
        )),

        Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_)
            if super::writes::writes(cx) =>
        {
            super::writes::rewrite(statement, cx)
        }
        other => Err(Refusal::statement(kind(other))),
    }
}

fn is_false(arg: Option<&Expr>) -> bool {
    match arg {
        Some(Expr::Value(v)) => match &v.value {
            Value::Boolean(b) => !b,
            Value::Number(n, _) => n == "0",
            Value::SingleQuotedString(s) => {
                matches!(s.to_ascii_lowercase().as_str(), "false" | "off" | "0")
            }
            _ => false,
        },
        Some(Expr::Identifier(i)) => {
            matches!(i.value.to_ascii_lowercase().as_str(), "false" | "off")
        }
        _ => false,
    }
}

fn check_set(set: &mut Set, cx: &Context) -> Result<(), Refusal> {
    match set {
        Set::SingleAssignment {
            variable, values, ..
        } => check_assignment(variable, values, cx),
        Set::ParenthesizedAssignments { variables, values } => {
            for variable in variables {
                check_assignment(variable, values, cx)?;
            }
            Ok(())
        }
        Set::MultipleAssignments { assignments } => {
            for a in assignments {
                let mut values = vec![a.value.clone()];
                check_assignment(&a.name, &mut values, cx)?;
                if let [value] = values.as_mut_slice() {
                    a.value = std::mem::replace(value, Expr::value(Value::Null));
                } else {
                    return Err(Refusal::Setting(a.name.to_string()));
                }
            }
            Ok(())
        }
        Set::SetTimeZone { value, .. } => check_value(value, "timezone"),
        Set::SetNames {
            charset_name,
            collation_name,
        } => {
            if collation_name.is_none() && is_utf8(&charset_name.value) {
                Ok(())
            } else {
                Err(Refusal::Setting("client_encoding".into()))
            }
        }
        Set::SetTransaction { snapshot: None, .. } => Ok(()),
        Set::SetTransaction { .. } => Err(Refusal::statement("SET TRANSACTION SNAPSHOT")),
        Set::SetRole { .. } => Err(Refusal::statement("SET ROLE")),
        Set::SetSessionAuthorization(_) => Err(Refusal::statement("SET SESSION AUTHORIZATION")),
        Set::SetNamesDefault {} => Err(Refusal::Setting("client_encoding".into())),
        Set::SetSessionParam(_) => Err(Refusal::statement("SET of a session parameter")),
    }
}

/// A setting's name, in lower case however it is written (PostgreSQL's
/// setting names ignore case, quoted or not), if members may set it.
fn setting_name(name: &ObjectName) -> Result<String, Refusal> {
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(|i| i.value.to_ascii_lowercase())
        .collect();
    let joined = parts.join(".");
    match parts.as_slice() {
        [single] if parts.len() == name.0.len() && SETTABLE.contains(&single.as_str()) => {
            Ok(single.clone())
        }
        _ => Err(Refusal::Setting(joined)),
    }
}

fn check_assignment(
    variable: &ObjectName,
    values: &mut Vec<Expr>,
    cx: &Context,
) -> Result<(), Refusal> {
    let name = setting_name(variable)?;
    for value in values.iter() {
        check_value(value, &name)?;
    }
    if name == "search_path" {
        // Any path: names resolve along it, in rowgate as upstream. `$user`
        // is spelt out as the member's name.
        if let Some(entries) = set_path_entries(values)? {
            if entries.iter().any(|e| e == "$user") {
                *values = path_for_member(&entries, &cx.access.user)
                    .iter()
                    .map(|s| Expr::Identifier(crate::names::ident(s)))
                    .collect();
            }
        }
        return Ok(());
    }
    if name == "client_encoding" {
        let utf8 = match values.as_slice() {
            [Expr::Value(v)] => match &v.value {
                Value::SingleQuotedString(s) => is_utf8(s),
                _ => false,
            },
            [Expr::Identifier(i)] => is_utf8(&i.value),
            _ => false,
        };
        if !utf8 {
            return Err(Refusal::Setting(name));
        }
    }
    Ok(())
}

/// `set_config(name, value, is_local)` with constants, as tools call it: the
/// same as `SET [LOCAL] name = value`, under the same rules.
pub(crate) fn check_set_config(mut args: Vec<&mut Expr>, cx: &Context) -> Result<(), Refusal> {
    let text = |e: &Expr| match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    };
    let refuse = || Refusal::Function("set_config".into());
    let [name, value, local] = args.as_mut_slice() else {
        return Err(refuse());
    };
    let local_ok = match local {
        Expr::Value(v) => {
            matches!(v.value, Value::Boolean(_))
                || matches!(&v.value, Value::SingleQuotedString(s)
                if matches!(s.to_ascii_lowercase().as_str(), "true" | "false" | "t" | "f" | "on" | "off"))
        }
        _ => false,
    };
    let Some(setting) = text(name) else {
        return Err(refuse());
    };
    let setting = setting.to_ascii_lowercase();
    if !SETTABLE.contains(&setting.as_str()) {
        return Err(Refusal::Setting(setting));
    }
    let placeholder =
        |e: &Expr| matches!(e, Expr::Value(v) if matches!(v.value, Value::Placeholder(_)));
    // A bound value (asyncpg restores `jit` so) is fine for the settings
    // whose every value is.
    let free = !matches!(setting.as_str(), "search_path" | "client_encoding");
    let new = match text(value) {
        Some(new) => new,
        None if free && placeholder(value) => String::new(),
        None => return Err(refuse()),
    };
    if !(local_ok || (free && placeholder(local))) {
        return Err(refuse());
    }
    match setting.as_str() {
        "client_encoding" if !is_utf8(&new) => Err(Refusal::Setting(setting)),
        "search_path" => {
            let entries = parse_path_text(&new).ok_or_else(|| Refusal::Setting(setting.clone()))?;
            if entries.iter().any(|e| e == "$user") {
                let text = path_text(&path_for_member(&entries, &cx.access.user));
                **value = Expr::value(Value::SingleQuotedString(text));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A setting's value must be a constant: a literal, a bare word, or a signed
/// number; never an expression that could read a table.
fn check_value(value: &Expr, name: &str) -> Result<(), Refusal> {
    match value {
        Expr::Value(_) | Expr::Identifier(_) => Ok(()),
        Expr::UnaryOp {
            op: UnaryOperator::Minus | UnaryOperator::Plus,
            expr,
        } if matches!(**expr, Expr::Value(_)) => Ok(()),
        Expr::Interval(_) if name == "timezone" => Ok(()),
        _ => Err(Refusal::Setting(name.to_string())),
    }
}

/// Whether an encoding name means UTF-8, the only client encoding members may use.
pub fn is_utf8(name: &str) -> bool {
    let n: String = name
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .collect::<String>()
        .to_ascii_lowercase();
    n == "utf8" || n == "unicode"
}

/// The leading keywords of a statement (`INSERT`, `CREATE TABLE`), to name
/// it in a refusal without repeating any of its data.
pub(crate) fn kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let mut words = text
        .split(|c: char| !c.is_ascii_alphabetic() && c != '_')
        .filter(|w| !w.is_empty());
    let first = words
        .next()
        .unwrap_or("this statement")
        .to_ascii_uppercase();
    let two_word = matches!(
        first.as_str(),
        "CREATE" | "ALTER" | "DROP" | "COMMENT" | "SECURITY" | "REFRESH" | "IMPORT"
    );
    match words.next() {
        Some(second) if two_word && second.chars().all(|c| c.is_ascii_uppercase() || c == '_') => {
            format!("{first} {second}")
        }
        _ => first,
    }
}
