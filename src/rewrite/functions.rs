//! Which functions members and analysts may call: the one place that lists
//! them. A call is checked however it is written (`f(...)`,
//! `pg_catalog.f(...)`, `"f"(...)`, in FROM or in any expression).
//!
//! Refused, in any schema: functions that run SQL given as text or read a
//! table by name, touch files or large objects, change session or server
//! state, or expose statistics of other rows and other sessions
//! ([`DENIED`], [`DENIED_PREFIXES`]). Functions outside `pg_catalog` and
//! `information_schema` (user-defined ones) are refused unless the policy
//! lists them under `functions:`.

use sqlparser::ast::{ObjectName, ObjectNamePart};

use super::catalog::Catalog;
use super::Refusal;
use crate::names::{fold, RelName};
use std::collections::BTreeSet;

/// Functions refused by name.
pub const DENIED: &[&str] = &[
    // Run SQL given as text, or read a table or schema by name.
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "crosstab",
    "crosstab2",
    "crosstab3",
    "crosstab4",
    "connectby",
    // Files and large objects.
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_file",
    "pg_current_logfile",
    "pg_relation_filepath",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "loread",
    "lowrite",
    // Session and server state.
    "set_config",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_notify",
    "pg_create_restore_point",
    "pg_switch_wal",
    "pg_promote",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_log_backend_memory_contexts",
    "pg_import_system_collations",
    "nextval",
    "setval",
    // Index maintenance: they write.
    "brin_summarize_new_values",
    "brin_summarize_range",
    "brin_desummarize_range",
    "gin_clean_pending_list",
    "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    // Statistics of other rows and other sessions.
    "pg_relation_size",
    "pg_total_relation_size",
    "pg_table_size",
    "pg_indexes_size",
    "pg_database_size",
    "pg_tablespace_size",
    "pg_lock_status",
    "pg_blocking_pids",
    "pg_safe_snapshot_blocking_pids",
    "pg_get_backend_memory_contexts",
    "pg_show_all_file_settings",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_prepared_xact",
    "pg_get_replication_slots",
    "pg_get_shmem_allocations",
    "pg_mcv_list_items",
    "pg_config",
    "pg_sequence_last_value",
    // The upstream session's prepared statements, rowgate's among them
    // (whose text spells out filters; in transaction pooling, other
    // users' too): read `pg_prepared_statements`, which shows the
    // session's own.
    "pg_prepared_statement",
];

/// Families refused by prefix.
pub const DENIED_PREFIXES: &[&str] = &[
    "dblink",
    "pg_ls_",
    "lo_",
    "pg_advisory_",
    "pg_try_advisory_",
    "pg_replication_",
    "pg_logical_",
    "pg_stat_",
    "pg_wal_",
    "pg_control_",
];

/// Functions of SQL syntax rather than of `pg_catalog` (`COALESCE(...)`,
/// `CURRENT_DATE`, `XMLCONCAT(...)`, ...): always PostgreSQL's own.
const SYNTAX: &[&str] = &[
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "current_date",
    "current_time",
    "current_timestamp",
    "localtime",
    "localtimestamp",
    "current_user",
    "current_role",
    "current_catalog",
    "current_schema",
    "session_user",
    "system_user",
    "user",
    "xmlconcat",
    "xmlelement",
    "xmlforest",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmlexists",
    "grouping",
    "row",
    "array",
    "extract",
    "position",
    "substring",
    "trim",
    "overlay",
    "normalize",
    "collation",
    "treat",
];

/// Schemas whose functions are PostgreSQL's own.
fn is_builtin_schema(schema: &str) -> bool {
    schema == "pg_catalog" || schema == "information_schema"
}

/// Functions of a refused family that only touch the caller's own session:
/// `pg_advisory_unlock_all()` releases the session's own advisory locks
/// (connection pools call it when a connection is given back).
const ALLOWED_IN_FAMILY: &[&str] = &["pg_advisory_unlock_all"];

fn is_denied(name: &str) -> bool {
    DENIED.contains(&name)
        || (DENIED_PREFIXES.iter().any(|p| name.starts_with(p))
            && !ALLOWED_IN_FAMILY.contains(&name))
}

/// Checks a call of the function `name` with `args` arguments.
pub(crate) fn check(
    name: &ObjectName,
    args: usize,
    allowlist: &BTreeSet<RelName>,
    catalog: &dyn Catalog,
    search_path: &[String],
) -> Result<(), Refusal> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Ok(fold(i)),
            ObjectNamePart::Function(_) => Err(Refusal::unsupported("computed function names")),
        })
        .collect::<Result<_, _>>()?;
    let refuse = || Refusal::Function(name.to_string());
    let (schema, function) = match parts.as_slice() {
        [f] => (None, f.as_str()),
        [s, f] => (Some(s.as_str()), f.as_str()),
        _ => return Err(refuse()),
    };
    // `ts_rewrite(query, text)` runs the text as SQL; the three-argument
    // form does not.
    if is_denied(function) || (function == "ts_rewrite" && args == 2) {
        return Err(refuse());
    }
    let allowed = |s: &str| allowlist.contains(&RelName::new(s, function));
    match schema {
        Some(s) if is_builtin_schema(s) || allowed(s) => Ok(()),
        Some(_) => Err(refuse()),
        // Unqualified: any same-named function in a schema of the search
        // path could be the one PostgreSQL picks, so each must be allowed.
        None => {
            let mut user_defined = false;
            for s in user_schemas(search_path) {
                if catalog.has_function(s, function) {
                    if !allowed(s) {
                        return Err(Refusal::Function(qualified(s, function)));
                    }
                    user_defined = true;
                }
            }
            // A name the snapshot does not know may be a function created
            // since: the proxy looks again before running it.
            if !user_defined
                && !SYNTAX.contains(&function)
                && !catalog.has_builtin_function(function)
            {
                return Err(Refusal::UnknownFunction(name.to_string()));
            }
            Ok(())
        }
    }
}

fn user_schemas(search_path: &[String]) -> impl Iterator<Item = &str> {
    search_path
        .iter()
        .map(String::as_str)
        .filter(|s| !is_builtin_schema(s))
}

fn qualified(schema: &str, name: &str) -> String {
    format!(
        "{}.{}",
        crate::names::ident(schema),
        crate::names::ident(name)
    )
}

/// `t.name` or `(t).name`: a column, or a call of a function `name` taking
/// the row. A user-defined one of that name must be allowed.
pub(crate) fn check_attribute(
    name: &str,
    allowlist: &BTreeSet<RelName>,
    catalog: &dyn Catalog,
    search_path: &[String],
) -> Result<(), Refusal> {
    for s in user_schemas(search_path) {
        if catalog.has_row_function(s, name) && !allowlist.contains(&RelName::new(s, name)) {
            return Err(Refusal::Function(qualified(s, name)));
        }
    }
    Ok(())
}

/// An operator written `symbol`: a user-defined one on the search path may
/// run any function.
pub(crate) fn check_operator(
    symbol: &str,
    catalog: &dyn Catalog,
    search_path: &[String],
) -> Result<(), Refusal> {
    for s in user_schemas(search_path) {
        if catalog.has_operator(s, symbol) {
            return Err(Refusal::UserCode(format!(
                "the user-defined operator {symbol} in schema {}",
                crate::names::ident(s)
            )));
        }
    }
    Ok(())
}

/// A cast to a domain: its constraints may run any function.
pub(crate) fn check_domain(
    data_type: &sqlparser::ast::DataType,
    catalog: &dyn Catalog,
    search_path: &[String],
) -> Result<(), Refusal> {
    if let sqlparser::ast::DataType::Custom(name, _) = data_type {
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident())
            .map(fold)
            .collect();
        let domain = match parts.as_slice() {
            [n] => user_schemas(search_path).any(|s| catalog.has_domain(s, n)),
            [s, n] => catalog.has_domain(s, n),
            _ => false,
        };
        if domain {
            return Err(Refusal::UserCode(format!(
                "the cast to the domain {data_type}"
            )));
        }
    }
    Ok(())
}

/// A whole row cast to a type that a user-defined function casts to (casts
/// from a table's row type are the ones members can reach): in a SELECT, a
/// bare name of one of its FROM items, cast.
pub(crate) fn check_row_casts(
    select: &mut sqlparser::ast::Select,
    catalog: &dyn Catalog,
) -> Result<(), Refusal> {
    use sqlparser::ast::{Expr, TableFactor};
    use std::ops::ControlFlow;
    let mut names = Vec::new();
    for twj in &select.from {
        for factor in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
            match factor {
                TableFactor::Table { name, alias, .. } => match alias {
                    Some(a) => names.push(fold(&a.name)),
                    None => names.extend(name.0.last().and_then(|p| p.as_ident()).map(fold)),
                },
                TableFactor::Derived { alias: Some(a), .. } => names.push(fold(&a.name)),
                _ => {}
            }
        }
    }
    let mut found = None;
    super::exprs_outside_subqueries(&*select, |e| {
        if let Expr::Cast {
            expr, data_type, ..
        } = e
        {
            let whole_row = match expr.as_ref() {
                Expr::Identifier(i) => names.contains(&fold(i)),
                Expr::Nested(_) | Expr::Tuple(_) => true,
                _ => false,
            };
            if whole_row && catalog.has_user_cast_to(&pg_type_name(data_type)) {
                found = Some(data_type.to_string());
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    match found {
        Some(t) => Err(Refusal::UserCode(format!("the cast of a row to {t}"))),
        None => Ok(()),
    }
}

/// A type as PostgreSQL's `format_type` names it, for the common spellings.
fn pg_type_name(data_type: &sqlparser::ast::DataType) -> String {
    let text = data_type.to_string().to_ascii_lowercase();
    let base = text.split('(').next().unwrap_or(&text).trim();
    match base {
        "int" | "int4" | "integer" => "integer",
        "int8" | "bigint" => "bigint",
        "int2" | "smallint" => "smallint",
        "float8" | "double" | "double precision" => "double precision",
        "float4" | "real" => "real",
        "bool" | "boolean" => "boolean",
        "varchar" | "character varying" => "character varying",
        "char" | "character" | "bpchar" => "character",
        "decimal" | "numeric" => "numeric",
        "timestamp" => "timestamp without time zone",
        "timestamptz" => "timestamp with time zone",
        other => other,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_names_and_families() {
        for f in [
            "query_to_xml",
            "pg_ls_dir",
            "lo_import",
            "pg_stat_get_activity",
            "dblink_exec",
            "set_config",
        ] {
            assert!(is_denied(f), "{f}");
        }
        for f in [
            "upper",
            "count",
            "pg_get_userbyid",
            "pg_table_is_visible",
            "format_type",
            "pg_statistic_ext",
        ] {
            assert!(!is_denied(f), "{f}");
        }
    }
}
