//! Name resolution: which schema holds a relation, answered by a [`Catalog`].
//! Offline (`explain`, `access`, tests) the [`OfflineCatalog`] answers from the
//! tables the policy names, PostgreSQL's own catalogs, and `public`; the proxy
//! answers from the live database.

use std::collections::HashSet;

use crate::names::RelName;
use crate::policy::PolicySet;

/// Which relations exist, for resolving unqualified names along a search path.
pub trait Catalog: Send + Sync {
    /// Whether `schema` holds a relation (table, view, ...) called `name`.
    fn contains(&self, schema: &str, name: &str) -> bool;

    /// Whether `schema` holds a function called `name`. Only schemas other
    /// than `pg_catalog` are asked (to find user-defined functions that an
    /// unqualified call could reach).
    fn has_function(&self, _schema: &str, _name: &str) -> bool {
        false
    }

    /// Whether `schema` holds a function of one row-typed argument called
    /// `name`: reachable by attribute notation (`t.name`, `(t).name`).
    fn has_row_function(&self, _schema: &str, _name: &str) -> bool {
        false
    }

    /// Whether `pg_catalog` has a function called `name`. Offline this is
    /// not known and taken to be so.
    fn has_builtin_function(&self, _name: &str) -> bool {
        true
    }

    /// Whether `schema` (outside the system schemas) holds an operator
    /// written `symbol`.
    fn has_operator(&self, _schema: &str, _symbol: &str) -> bool {
        false
    }

    /// Whether `schema` holds a domain called `name` (its constraints can
    /// run any function).
    fn has_domain(&self, _schema: &str, _name: &str) -> bool {
        false
    }

    /// Whether a user-defined function implements a cast to the type
    /// PostgreSQL names `type_name` (as `format_type` prints it).
    fn has_user_cast_to(&self, _type_name: &str) -> bool {
        false
    }

    /// The columns of a relation (folded names, type OIDs) in order, when
    /// known. Offline they are not.
    fn columns(&self, _schema: &str, _name: &str) -> Option<Vec<(String, super::types::Oid)>> {
        None
    }

    /// The name of the database this catalog describes, when known: a
    /// three-part name with it is a two-part name.
    fn database(&self) -> Option<&str> {
        None
    }

    /// Whether the relation is an ordinary or partitioned table a
    /// read-write member's statement may write (no rules, no triggers of
    /// its own, nor of any partition or child); offline, none is known to
    /// be.
    fn writable(&self, _schema: &str, _name: &str) -> bool {
        false
    }

    /// Whether the relation has inheritance children or partitions (or is
    /// partitioned); `None` when not known (offline).
    fn has_children(&self, _schema: &str, _name: &str) -> Option<bool> {
        None
    }

    /// Whether every role may use the schema (USAGE granted to PUBLIC, as
    /// on `public` by default). Offline, `public` is taken to be so.
    fn usable_by_all(&self, schema: &str) -> bool {
        schema == "public"
    }

    /// Whether a schema called `schema` exists; `None` when not known
    /// (offline).
    fn has_schema(&self, _schema: &str) -> Option<bool> {
        None
    }

    /// The settings PostgreSQL shows only to privileged roles, when known.
    fn privileged_settings(&self) -> Option<&HashSet<String>> {
        None
    }

    /// The database's type system, when known. Offline it is not, and no
    /// operator on a column is provably leakproof.
    fn types(&self) -> Option<&super::types::TypeCatalog> {
        None
    }

    /// The planner's estimate of a table's rows (`pg_class.reltuples`),
    /// when the table has been analyzed. Offline it is not known.
    fn row_estimate(&self, _schema: &str, _name: &str) -> Option<f64> {
        None
    }

    /// The planner's estimate of the distinct values of a column
    /// (`pg_stats.n_distinct`, as a count), when the table has been
    /// analyzed. Offline it is not known.
    fn distinct_estimate(&self, _schema: &str, _name: &str, _column: &str) -> Option<f64> {
        None
    }

    /// The default of an ordinary table's column, when known (offline it
    /// is not).
    fn column_default(&self, _schema: &str, _name: &str, _column: &str) -> Option<ColumnDefault> {
        None
    }
}

/// What PostgreSQL gives a column that an INSERT leaves out (or sets to
/// `DEFAULT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnDefault {
    /// No default: NULL.
    Null,
    /// Its default expression, as `pg_get_expr` prints it with only
    /// `pg_catalog` on the search path (every other name qualified).
    Expr(String),
    /// An identity or generated column: not an expression a statement can
    /// give.
    Generated,
}

/// Resolves a folded, unqualified relation name as PostgreSQL does: the
/// system catalog first (unless the search path places it explicitly), then
/// each schema of the search path in order. `$user` entries are skipped: the
/// proxy pins an explicit search path upstream.
pub fn resolve(catalog: &dyn Catalog, search_path: &[String], name: &str) -> Option<RelName> {
    let implicit_catalog = (!search_path.iter().any(|s| s == "pg_catalog")).then_some("pg_catalog");
    implicit_catalog
        .into_iter()
        .chain(search_path.iter().map(String::as_str))
        .filter(|schema| !schema.starts_with('$'))
        .find(|schema| catalog.contains(schema, name))
        .map(|schema| RelName::new(schema, name))
}

/// The schemas of PostgreSQL's own catalogs, which members may read (except
/// the relations of [`is_blocked_catalog`]).
pub fn is_system_schema(schema: &str) -> bool {
    schema == "pg_catalog" || schema == "information_schema"
}

/// Catalog relations that expose other rows' values, other sessions, or
/// secrets, and that no member or analyst may read (SPEC §4).
pub fn is_blocked_catalog(rel: &RelName) -> bool {
    if rel.schema == "information_schema" {
        // Views over pg_user_mapping, which holds foreign-server passwords.
        return matches!(
            rel.name.as_str(),
            "user_mapping_options" | "user_mappings" | "_pg_user_mappings"
        );
    }
    if rel.schema != "pg_catalog" {
        return false;
    }
    let name = rel.name.as_str();
    // `pg_stat_*`, `pg_statio_*` and `pg_stats*` are statistics of rows
    // and sessions; `pg_statistic_ext` (definitions, not data) stays readable
    // because psql's `\d` reads it.
    const PREFIXES: &[&str] = &["pg_stat_", "pg_statio_", "pg_stats", "pg_replication_"];
    const NAMES: &[&str] = &[
        "pg_statistic",
        "pg_statistic_ext_data",
        "pg_authid",
        "pg_shadow",
        "pg_user_mapping",
        "pg_user_mappings",
        "pg_largeobject",
        "pg_largeobject_metadata",
        "pg_file_settings",
        "pg_hba_file_rules",
        "pg_ident_file_mappings",
        "pg_prepared_xacts",
        "pg_subscription",
        "pg_locks",
        "pg_backend_memory_contexts",
        "pg_shmem_allocations",
        "pg_config",
        // Sequences' last values: writes of other sessions.
        "pg_sequences",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

/// The catalog used without a database: the policy's tables, PostgreSQL's
/// built-in catalog relations, and any other name taken to be in `public`.
#[derive(Clone, Debug)]
pub struct OfflineCatalog {
    tables: HashSet<RelName>,
}

impl OfflineCatalog {
    pub fn new(policy: &PolicySet) -> Self {
        Self {
            tables: policy.tables.keys().cloned().collect(),
        }
    }
}

impl Catalog for OfflineCatalog {
    fn contains(&self, schema: &str, name: &str) -> bool {
        match schema {
            "pg_catalog" => PG_CATALOG.binary_search(&name).is_ok(),
            "information_schema" => INFORMATION_SCHEMA.binary_search(&name).is_ok(),
            "public" => true,
            _ => self.tables.contains(&RelName::new(schema, name)),
        }
    }
}

/// Tables and views of `pg_catalog` in PostgreSQL 15, sorted.
pub const PG_CATALOG: &[&str] = &[
    "pg_aggregate",
    "pg_am",
    "pg_amop",
    "pg_amproc",
    "pg_attrdef",
    "pg_attribute",
    "pg_auth_members",
    "pg_authid",
    "pg_available_extension_versions",
    "pg_available_extensions",
    "pg_backend_memory_contexts",
    "pg_cast",
    "pg_class",
    "pg_collation",
    "pg_config",
    "pg_constraint",
    "pg_conversion",
    "pg_cursors",
    "pg_database",
    "pg_db_role_setting",
    "pg_default_acl",
    "pg_depend",
    "pg_description",
    "pg_enum",
    "pg_event_trigger",
    "pg_extension",
    "pg_file_settings",
    "pg_foreign_data_wrapper",
    "pg_foreign_server",
    "pg_foreign_table",
    "pg_group",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_index",
    "pg_indexes",
    "pg_inherits",
    "pg_init_privs",
    "pg_language",
    "pg_largeobject",
    "pg_largeobject_metadata",
    "pg_locks",
    "pg_matviews",
    "pg_namespace",
    "pg_opclass",
    "pg_operator",
    "pg_opfamily",
    "pg_parameter_acl",
    "pg_partitioned_table",
    "pg_policies",
    "pg_policy",
    "pg_prepared_statements",
    "pg_prepared_xacts",
    "pg_proc",
    "pg_publication",
    "pg_publication_namespace",
    "pg_publication_rel",
    "pg_publication_tables",
    "pg_range",
    "pg_replication_origin",
    "pg_replication_origin_status",
    "pg_replication_slots",
    "pg_rewrite",
    "pg_roles",
    "pg_rules",
    "pg_seclabel",
    "pg_seclabels",
    "pg_sequence",
    "pg_sequences",
    "pg_settings",
    "pg_shadow",
    "pg_shdepend",
    "pg_shdescription",
    "pg_shmem_allocations",
    "pg_shseclabel",
    "pg_stat_activity",
    "pg_stat_all_indexes",
    "pg_stat_all_tables",
    "pg_stat_archiver",
    "pg_stat_bgwriter",
    "pg_stat_database",
    "pg_stat_database_conflicts",
    "pg_stat_gssapi",
    "pg_stat_progress_analyze",
    "pg_stat_progress_basebackup",
    "pg_stat_progress_cluster",
    "pg_stat_progress_copy",
    "pg_stat_progress_create_index",
    "pg_stat_progress_vacuum",
    "pg_stat_recovery_prefetch",
    "pg_stat_replication",
    "pg_stat_replication_slots",
    "pg_stat_slru",
    "pg_stat_ssl",
    "pg_stat_subscription",
    "pg_stat_subscription_stats",
    "pg_stat_sys_indexes",
    "pg_stat_sys_tables",
    "pg_stat_user_functions",
    "pg_stat_user_indexes",
    "pg_stat_user_tables",
    "pg_stat_wal",
    "pg_stat_wal_receiver",
    "pg_stat_xact_all_tables",
    "pg_stat_xact_sys_tables",
    "pg_stat_xact_user_functions",
    "pg_stat_xact_user_tables",
    "pg_statio_all_indexes",
    "pg_statio_all_sequences",
    "pg_statio_all_tables",
    "pg_statio_sys_indexes",
    "pg_statio_sys_sequences",
    "pg_statio_sys_tables",
    "pg_statio_user_indexes",
    "pg_statio_user_sequences",
    "pg_statio_user_tables",
    "pg_statistic",
    "pg_statistic_ext",
    "pg_statistic_ext_data",
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_subscription",
    "pg_subscription_rel",
    "pg_tables",
    "pg_tablespace",
    "pg_timezone_abbrevs",
    "pg_timezone_names",
    "pg_transform",
    "pg_trigger",
    "pg_ts_config",
    "pg_ts_config_map",
    "pg_ts_dict",
    "pg_ts_parser",
    "pg_ts_template",
    "pg_type",
    "pg_user",
    "pg_user_mapping",
    "pg_user_mappings",
    "pg_views",
];

/// Views of `information_schema` in PostgreSQL 15, sorted.
pub const INFORMATION_SCHEMA: &[&str] = &[
    "_pg_foreign_data_wrappers",
    "_pg_foreign_servers",
    "_pg_foreign_table_columns",
    "_pg_foreign_tables",
    "_pg_user_mappings",
    "administrable_role_authorizations",
    "applicable_roles",
    "attributes",
    "character_sets",
    "check_constraint_routine_usage",
    "check_constraints",
    "collation_character_set_applicability",
    "collations",
    "column_column_usage",
    "column_domain_usage",
    "column_options",
    "column_privileges",
    "column_udt_usage",
    "columns",
    "constraint_column_usage",
    "constraint_table_usage",
    "data_type_privileges",
    "domain_constraints",
    "domain_udt_usage",
    "domains",
    "element_types",
    "enabled_roles",
    "foreign_data_wrapper_options",
    "foreign_data_wrappers",
    "foreign_server_options",
    "foreign_servers",
    "foreign_table_options",
    "foreign_tables",
    "information_schema_catalog_name",
    "key_column_usage",
    "parameters",
    "referential_constraints",
    "role_column_grants",
    "role_routine_grants",
    "role_table_grants",
    "role_udt_grants",
    "role_usage_grants",
    "routine_column_usage",
    "routine_privileges",
    "routine_routine_usage",
    "routine_sequence_usage",
    "routine_table_usage",
    "routines",
    "schemata",
    "sequences",
    "sql_features",
    "sql_implementation_info",
    "sql_parts",
    "sql_sizing",
    "table_constraints",
    "table_privileges",
    "tables",
    "transforms",
    "triggered_update_columns",
    "triggers",
    "udt_privileges",
    "usage_privileges",
    "user_defined_types",
    "user_mapping_options",
    "user_mappings",
    "view_column_usage",
    "view_routine_usage",
    "view_table_usage",
    "views",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_lists_are_sorted() {
        assert!(PG_CATALOG.windows(2).all(|w| w[0] < w[1]));
        assert!(INFORMATION_SCHEMA.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn system_catalog_comes_first() {
        let c = OfflineCatalog::new(&PolicySet::default());
        let path = vec!["public".to_string()];
        assert_eq!(
            resolve(&c, &path, "pg_class"),
            Some(RelName::new("pg_catalog", "pg_class"))
        );
        assert_eq!(
            resolve(&c, &path, "orders"),
            Some(RelName::new("public", "orders"))
        );
        assert!(is_blocked_catalog(&RelName::new(
            "pg_catalog",
            "pg_stat_activity"
        )));
        assert!(is_blocked_catalog(&RelName::new(
            "pg_catalog",
            "pg_statistic"
        )));
        assert!(is_blocked_catalog(&RelName::new(
            "pg_catalog",
            "pg_stats_ext"
        )));
        assert!(is_blocked_catalog(&RelName::new(
            "pg_catalog",
            "pg_statistic_ext_data"
        )));
        assert!(is_blocked_catalog(&RelName::new(
            "pg_catalog",
            "pg_statio_user_tables"
        )));
        assert!(!is_blocked_catalog(&RelName::new(
            "pg_catalog",
            "pg_statistic_ext"
        )));
        assert!(!is_blocked_catalog(&RelName::new("pg_catalog", "pg_class")));
        assert!(!is_blocked_catalog(&RelName::new("public", "pg_stats")));
        assert!(is_blocked_catalog(&RelName::new(
            "information_schema",
            "user_mapping_options"
        )));
        assert!(!is_blocked_catalog(&RelName::new(
            "information_schema",
            "tables"
        )));
    }
}
