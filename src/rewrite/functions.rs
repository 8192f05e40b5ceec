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

/// Schemas whose functions are PostgreSQL's own.
fn is_builtin_schema(schema: &str) -> bool {
    schema == "pg_catalog" || schema == "information_schema"
}

fn is_denied(name: &str) -> bool {
    DENIED.contains(&name) || DENIED_PREFIXES.iter().any(|p| name.starts_with(p))
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
            for s in search_path.iter().filter(|s| !is_builtin_schema(s)) {
                if catalog.has_function(s, function) && !allowed(s) {
                    return Err(Refusal::Function(format!(
                        "{}.{}",
                        crate::names::ident(s),
                        crate::names::ident(function)
                    )));
                }
            }
            Ok(())
        }
    }
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
