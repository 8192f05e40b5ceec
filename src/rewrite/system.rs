//! The session and the catalog a member sees: what makes a member look, to
//! a BI tool, like a native PostgreSQL role named like the member that holds
//! SELECT on the granted relations and nothing else. An analyst is such a
//! role with SELECT on every table: the same applies, with nothing hidden.
//!
//! - Who am I: `current_user`, `session_user`, `user`, `current_role` are the
//!   member's login name; `pg_roles` and `pg_user` show the member as a role
//!   without attributes; the privilege functions (`has_table_privilege`,
//!   ...) answer from the grants.
//! - The catalog: with `catalog: hide` (the default), the catalog relations
//!   that list relations, columns, constraints, indexes, comments and types
//!   show the system's own objects and the granted relations only, and
//!   schemas that hold nothing granted are not shown. With `catalog: native`
//!   they are left as PostgreSQL shows them to any role.
//! - Statistics: `pg_stat_user_tables` and its kin answer for the granted
//!   relations only, with the counters that would tell other sessions'
//!   activity NULL; the size functions answer for granted relations (and
//!   their indexes) and NULL otherwise; `pg_stat_activity`, `pg_stat_ssl`
//!   and `pg_stat_gssapi` show the member's own session only.
//!
//! Each replacement is a derived table or an expression built here as SQL
//! text and parsed, so what is forwarded is always printed from a tree.

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName, Query, SelectItem,
    Statement,
};

use super::{Context, Refusal};
use crate::names::{fold, RelName};
use crate::policy::{Grant, Role};

/// How the catalog lists objects a member cannot read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Listing {
    /// Only the system's objects and the granted relations are listed.
    #[default]
    Hide,
    /// Everything is listed, as PostgreSQL lists it to any role.
    Native,
}

/// Columns of the statistics views a member reads as PostgreSQL gives
/// them: names, estimates of live and dead rows (what `pg_class.reltuples`
/// shows any role), and maintenance times and counts. Every other column
/// (scans, tuples read, inserted, updated, deleted, blocks read) counts the
/// activity of every session, on hidden rows too, and reads NULL.
const STAT_KEPT: &[&str] = &[
    "relid",
    "indexrelid",
    "schemaname",
    "relname",
    "indexrelname",
    "n_live_tup",
    "n_dead_tup",
    "last_vacuum",
    "last_autovacuum",
    "last_analyze",
    "last_autoanalyze",
    "vacuum_count",
    "autovacuum_count",
    "analyze_count",
    "autoanalyze_count",
];

/// Statistics views answered for the granted relations.
const STAT_VIEWS: &[(&str, &str, &str)] = &[
    ("pg_stat_user_tables", "schemaname", "relname"),
    ("pg_stat_all_tables", "schemaname", "relname"),
    ("pg_stat_sys_tables", "schemaname", "relname"),
    ("pg_statio_user_tables", "schemaname", "relname"),
    ("pg_statio_all_tables", "schemaname", "relname"),
    ("pg_statio_sys_tables", "schemaname", "relname"),
    ("pg_stat_xact_user_tables", "schemaname", "relname"),
    ("pg_stat_xact_all_tables", "schemaname", "relname"),
    ("pg_stat_user_indexes", "schemaname", "relname"),
    ("pg_stat_all_indexes", "schemaname", "relname"),
    ("pg_stat_sys_indexes", "schemaname", "relname"),
    ("pg_statio_user_indexes", "schemaname", "relname"),
    ("pg_statio_all_indexes", "schemaname", "relname"),
    ("pg_statio_sys_indexes", "schemaname", "relname"),
];

/// Views of the server's sessions: the member's own only.
const OWN_SESSION: &[&str] = &["pg_stat_activity", "pg_stat_ssl", "pg_stat_gssapi"];

/// Catalog tables whose rows belong to one relation, by the column holding
/// its OID. A row is shown when its relation is.
const BY_RELATION: &[(&str, &str)] = &[
    ("pg_class", "oid"),
    ("pg_attribute", "attrelid"),
    ("pg_index", "indrelid"),
    ("pg_attrdef", "adrelid"),
    ("pg_trigger", "tgrelid"),
    ("pg_rewrite", "ev_class"),
    ("pg_policy", "polrelid"),
    ("pg_statistic_ext", "stxrelid"),
    ("pg_sequence", "seqrelid"),
    ("pg_partitioned_table", "partrelid"),
    ("pg_publication_rel", "prrelid"),
];

/// Views (of `pg_catalog` and `information_schema`) whose rows belong to a
/// relation named by a schema column and a name column.
const BY_NAME: &[(&str, &str, &str, &str)] = &[
    ("pg_catalog", "pg_tables", "schemaname", "tablename"),
    ("pg_catalog", "pg_views", "schemaname", "viewname"),
    ("pg_catalog", "pg_matviews", "schemaname", "matviewname"),
    ("pg_catalog", "pg_indexes", "schemaname", "tablename"),
    ("pg_catalog", "pg_policies", "schemaname", "tablename"),
    ("pg_catalog", "pg_rules", "schemaname", "tablename"),
    (
        "pg_catalog",
        "pg_publication_tables",
        "schemaname",
        "tablename",
    ),
    ("information_schema", "tables", "table_schema", "table_name"),
    (
        "information_schema",
        "columns",
        "table_schema",
        "table_name",
    ),
    ("information_schema", "views", "table_schema", "table_name"),
    (
        "information_schema",
        "table_constraints",
        "table_schema",
        "table_name",
    ),
    (
        "information_schema",
        "key_column_usage",
        "table_schema",
        "table_name",
    ),
    (
        "information_schema",
        "constraint_column_usage",
        "table_schema",
        "table_name",
    ),
    (
        "information_schema",
        "constraint_table_usage",
        "table_schema",
        "table_name",
    ),
    (
        "information_schema",
        "table_privileges",
        "table_schema",
        "table_name",
    ),
    (
        "information_schema",
        "role_table_grants",
        "table_schema",
        "table_name",
    ),
    (
        "information_schema",
        "column_privileges",
        "table_schema",
        "table_name",
    ),
    (
        "information_schema",
        "role_column_grants",
        "table_schema",
        "table_name",
    ),
    (
        "information_schema",
        "column_udt_usage",
        "table_schema",
        "table_name",
    ),
    (
        "information_schema",
        "column_domain_usage",
        "table_schema",
        "table_name",
    ),
    (
        "information_schema",
        "column_column_usage",
        "table_schema",
        "table_name",
    ),
    (
        "information_schema",
        "triggers",
        "event_object_schema",
        "event_object_table",
    ),
    (
        "information_schema",
        "view_table_usage",
        "view_schema",
        "view_name",
    ),
    (
        "information_schema",
        "view_column_usage",
        "view_schema",
        "view_name",
    ),
    (
        "information_schema",
        "view_routine_usage",
        "table_schema",
        "table_name",
    ),
    (
        "information_schema",
        "check_constraint_routine_usage",
        "constraint_schema",
        "constraint_name",
    ),
];

/// Views of `information_schema` whose rows belong to a schema-level
/// object (a function, type, domain, sequence), by the column naming its
/// schema: a row is shown when its schema is.
const BY_SCHEMA: &[(&str, &str)] = &[
    ("routines", "routine_schema"),
    ("parameters", "specific_schema"),
    ("routine_privileges", "routine_schema"),
    ("role_routine_grants", "routine_schema"),
    ("routine_column_usage", "routine_schema"),
    ("routine_routine_usage", "routine_schema"),
    ("routine_sequence_usage", "routine_schema"),
    ("routine_table_usage", "routine_schema"),
    ("domains", "domain_schema"),
    ("domain_constraints", "domain_schema"),
    ("domain_udt_usage", "domain_schema"),
    ("sequences", "sequence_schema"),
    ("usage_privileges", "object_schema"),
    ("role_usage_grants", "object_schema"),
    ("check_constraints", "constraint_schema"),
    ("element_types", "object_schema"),
    ("data_type_privileges", "object_schema"),
    ("triggered_update_columns", "event_object_schema"),
    ("check_constraint_routine_usage", "constraint_schema"),
];

/// Views of `information_schema` whose rows belong to a type, by the
/// columns naming its schema and name.
const BY_TYPE: &[(&str, &str, &str)] = &[
    (
        "user_defined_types",
        "user_defined_type_schema",
        "user_defined_type_name",
    ),
    ("attributes", "udt_schema", "udt_name"),
    ("udt_privileges", "udt_schema", "udt_name"),
    ("role_udt_grants", "udt_schema", "udt_name"),
];

/// A string literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The schemas whose every relation is visible: the system's and the
/// schemas granted whole.
fn whole_schemas(access: &crate::policy::Access) -> Vec<String> {
    let mut out = vec!["pg_catalog".to_string(), "information_schema".to_string()];
    for (g, _) in &access.grants {
        if let Grant::Schema(s) = g {
            out.push(s.clone());
        }
    }
    out
}

/// The relations granted one by one.
fn granted_tables(access: &crate::policy::Access) -> Vec<&RelName> {
    access
        .grants
        .iter()
        .filter_map(|(g, _)| match g {
            Grant::Table(t) => Some(t),
            Grant::Schema(_) => None,
        })
        .collect()
}

/// A condition on a schema column and a name column: the relation they
/// name is visible to the member.
fn visible_name(access: &crate::policy::Access, schema: &str, name: &str) -> String {
    // An analyst reads every table.
    if access.role == Role::Analyst {
        return "true".to_string();
    }
    let schemas: Vec<String> = whole_schemas(access).iter().map(|s| lit(s)).collect();
    let tables: Vec<String> = granted_tables(access)
        .iter()
        .map(|t| format!("({}, {})", lit(&t.schema), lit(&t.name)))
        .collect();
    let mut out = format!("({schema}::text IN ({})", schemas.join(", "));
    if !tables.is_empty() {
        out.push_str(&format!(
            " OR ({schema}::text, {name}::text) IN ({})",
            tables.join(", ")
        ));
    }
    out.push(')');
    out
}

/// A condition on a `pg_type` row (its columns prefixed `prefix`): the type
/// is visible. A row type is shown with its relation, and so is the array
/// type of a row type.
fn type_filter(access: &crate::policy::Access, prefix: &str) -> String {
    format!(
        "({prefix}typrelid = 0 OR {}) AND ({prefix}typelem = 0 OR {prefix}typelem NOT IN \
         (SELECT vt.oid FROM pg_catalog.pg_type vt WHERE vt.typrelid <> 0 AND NOT {})) AND {}",
        visible_oid(access, &format!("{prefix}typrelid")),
        visible_oid(access, "vt.typrelid"),
        visible_schema(access, &format!("{prefix}typnamespace"))
    )
}

/// The schemas whose objects (types, functions, operators) are visible:
/// the system's, those granted whole, those that hold a granted table.
fn visible_schema_names(access: &crate::policy::Access) -> String {
    let mut names = whole_schemas(access);
    for t in granted_tables(access) {
        if !names.contains(&t.schema) {
            names.push(t.schema.clone());
        }
    }
    names.iter().map(|s| lit(s)).collect::<Vec<_>>().join(", ")
}

/// The OIDs of the visible relations: those visible by name, the indexes
/// and owned sequences of those, and the composite types (which hold no
/// rows) of visible schemas.
fn visible_relations(access: &crate::policy::Access) -> String {
    format!(
        "SELECT vc.oid FROM pg_catalog.pg_class vc \
         LEFT JOIN pg_catalog.pg_index vi ON vi.indexrelid = vc.oid \
         LEFT JOIN pg_catalog.pg_depend vd ON vc.relkind = 'S' AND vd.objid = vc.oid \
         AND vd.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
         AND vd.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND vd.deptype IN ('a', 'i') \
         JOIN pg_catalog.pg_class vo ON vo.oid = coalesce(vi.indrelid, vd.refobjid, vc.oid) \
         JOIN pg_catalog.pg_namespace vn ON vn.oid = vo.relnamespace WHERE {} \
         OR (vc.relkind = 'c' AND vn.nspname::text IN ({}))",
        visible_name(access, "vn.nspname", "vo.relname"),
        visible_schema_names(access)
    )
}

/// A condition on a relation OID: the relation is visible (granted, a
/// system relation, or an index or owned sequence of one).
fn visible_oid(access: &crate::policy::Access, oid: &str) -> String {
    format!("{oid} IN ({})", visible_relations(access))
}

/// A condition on a schema OID: the schema is a system schema, is granted,
/// or holds a granted relation.
fn visible_schema(access: &crate::policy::Access, oid: &str) -> String {
    if access.role == Role::Analyst {
        return "true".to_string();
    }
    format!(
        "{oid} IN (SELECT vn.oid FROM pg_catalog.pg_namespace vn WHERE vn.nspname::text IN ({}) \
         OR vn.nspname::text LIKE 'pg\\_%')",
        visible_schema_names(access)
    )
}

fn parse_query(sql: &str) -> Result<Query, Refusal> {
    match super::parse(sql)?.pop() {
        Some(Statement::Query(q)) => Ok(*q),
        _ => Err(Refusal::unsupported("this catalog relation")),
    }
}

fn type_name(cx: &Context, oid: super::types::Oid) -> Option<String> {
    let info = cx.catalog.types()?.types.get(&oid)?;
    Some(format!("pg_catalog.{}", crate::names::ident(&info.name)))
}

/// `SELECT <columns> FROM pg_catalog.<view>`, each column as it is unless
/// `replace` gives its replacement text; `None` when the columns are not
/// known (offline).
fn projection(
    cx: &Context,
    schema: &str,
    view: &str,
    replace: impl Fn(&str, &str) -> Option<String>,
) -> Option<String> {
    let columns = cx.catalog.columns(schema, view)?;
    let mut items = Vec::new();
    for (name, oid) in &columns {
        let ty = type_name(cx, *oid)?;
        let quoted = crate::names::ident(name).to_string();
        match replace(name, &ty) {
            Some(text) => items.push(format!("{text} AS {quoted}")),
            None => items.push(quoted),
        }
    }
    Some(items.join(", "))
}

/// The prefix of the prepared statements sessions share on a pooled
/// connection (`frontend/session/pooling.rs` names them).
pub const SHARED_STATEMENTS: &str = "rowgate_s_";

/// The derived table that stands for the catalog relation `rel` read by a
/// member, or `None` to read it as it is.
pub(crate) fn catalog_view(rel: &RelName, cx: &Context) -> Result<Option<Query>, Refusal> {
    if cx.access.role == Role::Admin {
        return Ok(None);
    }
    let access = cx.access;
    let user = lit(&access.user);
    let name = rel.name.as_str();
    let from = format!("{}.{}", rel.schema, crate::names::ident(name));
    if rel.schema == "pg_catalog" {
        if let Some((_, schema_col, name_col)) = STAT_VIEWS.iter().find(|(v, _, _)| *v == name) {
            let Some(columns) = projection(cx, "pg_catalog", name, |col, ty| {
                (!STAT_KEPT.contains(&col)).then(|| format!("NULL::{ty}"))
            }) else {
                return Err(Refusal::Table(rel.to_string()));
            };
            let filter = visible_name(access, schema_col, name_col);
            return parse_query(&format!("SELECT {columns} FROM {from} WHERE {filter}")).map(Some);
        }
        if OWN_SESSION.contains(&name) {
            // The session's statement text upstream is rowgate's rewrite
            // of it, which spells out the member's filters: not shown.
            let columns = projection(cx, "pg_catalog", name, |col, ty| match col {
                "usename" => Some(format!("{user}::{ty}")),
                "usesysid" | "query" | "query_id" => Some(format!("NULL::{ty}")),
                _ => None,
            });
            // Offline the columns are not known: nothing to show them by.
            let Some(columns) = columns else {
                return Err(Refusal::Table(rel.to_string()));
            };
            return parse_query(&format!(
                "SELECT {columns} FROM {from} WHERE pid = pg_catalog.pg_backend_pid()"
            ))
            .map(Some);
        }
        if name == "pg_roles" || name == "pg_user" {
            return roles_view(rel, cx).map(Some);
        }
        if name == "pg_prepared_statements" {
            // In transaction pooling a connection holds the statements every
            // session shares on it, under shared names: their text spells
            // out other users' filters. Not shown.
            return parse_query(&format!(
                "SELECT * FROM {from} WHERE NOT pg_catalog.starts_with(name, {})",
                lit(SHARED_STATEMENTS)
            ))
            .map(Some);
        }
    }
    // `information_schema` shows a role only what it holds privileges on
    // (or owns): that stays so in both modes.
    if (cx.listing == Listing::Native && rel.schema != "information_schema")
        || cx.access.role == Role::Analyst
    {
        return Ok(None);
    }
    let filter = if rel.schema == "pg_catalog" {
        if let Some((_, col)) = BY_RELATION.iter().find(|(t, _)| *t == name) {
            visible_oid(access, col)
        } else if let Some((_, _, s, n)) = BY_NAME
            .iter()
            .find(|(sch, v, _, _)| *sch == "pg_catalog" && *v == name)
        {
            visible_name(access, s, n)
        } else {
            match name {
                "pg_namespace" => visible_schema(access, "oid"),
                "pg_constraint" => format!(
                    "(conrelid = 0 OR {}) AND (confrelid = 0 OR {}) AND {}",
                    visible_oid(access, "conrelid"),
                    visible_oid(access, "confrelid"),
                    visible_schema(access, "connamespace")
                ),
                "pg_inherits" => format!(
                    "{} AND {}",
                    visible_oid(access, "inhrelid"),
                    visible_oid(access, "inhparent")
                ),
                // Comments follow what they describe.
                "pg_description" => format!(
                    "CASE classoid \
                     WHEN 'pg_catalog.pg_class'::pg_catalog.regclass THEN {} \
                     WHEN 'pg_catalog.pg_namespace'::pg_catalog.regclass THEN {} \
                     WHEN 'pg_catalog.pg_proc'::pg_catalog.regclass THEN objoid IN \
                       (SELECT vp.oid FROM pg_catalog.pg_proc vp WHERE {}) \
                     WHEN 'pg_catalog.pg_type'::pg_catalog.regclass THEN objoid IN \
                       (SELECT vt.oid FROM pg_catalog.pg_type vt WHERE {}) \
                     WHEN 'pg_catalog.pg_constraint'::pg_catalog.regclass THEN objoid IN \
                       (SELECT vk.oid FROM pg_catalog.pg_constraint vk WHERE vk.conrelid = 0 OR {}) \
                     ELSE true END",
                    visible_oid(access, "objoid"),
                    visible_schema(access, "objoid"),
                    visible_schema(access, "vp.pronamespace"),
                    visible_schema(access, "vt.typnamespace"),
                    visible_oid(access, "vk.conrelid")
                ),
                "pg_type" => type_filter(access, ""),
                "pg_enum" => format!(
                    "enumtypid IN (SELECT ve.oid FROM pg_catalog.pg_type ve WHERE {})",
                    type_filter(access, "ve.")
                ),
                "pg_proc" => visible_schema(access, "pronamespace"),
                "pg_depend" => format!(
                    "(classid <> 'pg_catalog.pg_class'::pg_catalog.regclass OR {}) AND \
                     (refclassid <> 'pg_catalog.pg_class'::pg_catalog.regclass OR {})",
                    visible_oid(access, "objid"),
                    visible_oid(access, "refobjid")
                ),
                _ => return Ok(None),
            }
        }
    } else if let Some((_, _, s, n)) = BY_NAME
        .iter()
        .find(|(sch, v, _, _)| *sch == "information_schema" && *v == name)
    {
        visible_name(access, s, n)
    } else if let Some((_, schema_col, name_col)) = BY_TYPE.iter().find(|(v, _, _)| *v == name) {
        if rel.schema != "information_schema" {
            return Ok(None);
        }
        format!(
            "({schema_col}::text, {name_col}::text) IN (SELECT vn.nspname::text, vy.typname::text \
             FROM pg_catalog.pg_type vy JOIN pg_catalog.pg_namespace vn ON vn.oid = vy.typnamespace \
             WHERE {})",
            type_filter(access, "vy.")
        )
    } else if let Some((_, col)) = BY_SCHEMA.iter().find(|(v, _)| *v == name) {
        if rel.schema != "information_schema" {
            return Ok(None);
        }
        format!(
            "({col}::text IN ({}) OR {col}::text LIKE 'pg\\_%')",
            visible_schema_names(access)
        )
    } else if rel.schema == "information_schema" && name == "schemata" {
        if cx.listing == Listing::Native {
            // It lists the schemas the role owns: a member owns none.
            return parse_query(&format!("SELECT * FROM {from} WHERE false")).map(Some);
        }
        format!(
            "schema_name::text IN (SELECT vn.nspname::text FROM pg_catalog.pg_namespace vn WHERE {})",
            visible_schema(access, "vn.oid")
        )
    } else if rel.schema == "information_schema" && name == "referential_constraints" {
        format!(
            "(constraint_schema, constraint_name) IN (SELECT vn.nspname::text, vc.conname::text \
             FROM pg_catalog.pg_constraint vc JOIN pg_catalog.pg_namespace vn \
             ON vn.oid = vc.connamespace WHERE {} AND {})",
            visible_oid(access, "vc.conrelid"),
            visible_oid(access, "vc.confrelid")
        )
    } else {
        return Ok(None);
    };
    // The access privileges of a granted relation are the member's:
    // SELECT (as PUBLIC, since the member is no role upstream), not the
    // upstream grants.
    let columns = if rel.schema == "pg_catalog" && name == "pg_class" {
        projection(cx, "pg_catalog", name, |col, ty| {
            (col == "relacl").then(|| {
                format!(
                    "CASE WHEN relkind NOT IN ('r', 'v', 'm', 'p', 'f') \
                     OR relnamespace IN (SELECT vn.oid FROM pg_catalog.pg_namespace vn \
                     WHERE vn.nspname::text IN ('pg_catalog', 'information_schema')) THEN relacl \
                     ELSE ARRAY[pg_catalog.makeaclitem(0, relowner, 'SELECT', false)]::{ty} END"
                )
            })
        })
    } else {
        None
    };
    let columns = columns.unwrap_or_else(|| "*".to_string());
    parse_query(&format!("SELECT {columns} FROM {from} WHERE {filter}")).map(Some)
}

/// `pg_roles` or `pg_user` as a member sees them: PostgreSQL's predefined
/// roles, and the member as a role that can log in and has no other
/// attribute.
fn roles_view(rel: &RelName, cx: &Context) -> Result<Query, Refusal> {
    let user = lit(&cx.access.user);
    let name = rel.name.as_str();
    let (name_col, prefix) = if name == "pg_roles" {
        ("rolname", "rol")
    } else {
        ("usename", "use")
    };
    let Some(member) = projection(cx, "pg_catalog", name, |col, ty| {
        let value = match col.strip_prefix(prefix).unwrap_or(col) {
            _ if col == name_col => format!("{user}::{ty}"),
            "inherit" | "canlogin" => "true".to_string(),
            "connlimit" => "-1".to_string(),
            "password" | "passwd" => format!("'********'::{ty}"),
            _ if ty == "pg_catalog.bool" => "false".to_string(),
            _ => format!("NULL::{ty}"),
        };
        Some(format!("{value}::{ty}"))
    }) else {
        return Err(Refusal::Table(rel.to_string()));
    };
    // Hidden: the other roles but PostgreSQL's predefined ones. Native:
    // every role, as PostgreSQL lists them to any role.
    let oid_col = if name == "pg_roles" {
        "oid"
    } else {
        "usesysid"
    };
    let others = match cx.listing {
        // The owners of what the member sees are listed too (tools join
        // `relowner` to the roles).
        Listing::Hide => format!(
            "{name_col}::text LIKE 'pg\\_%' OR {oid_col} IN (SELECT vc.relowner FROM pg_catalog.pg_class vc \
             WHERE {}) OR {oid_col} IN (SELECT vn.nspowner FROM pg_catalog.pg_namespace vn WHERE {})",
            visible_oid(cx.access, "vc.oid"),
            visible_schema(cx.access, "vn.oid")
        ),
        Listing::Native => format!("{name_col}::text <> {user}"),
    };
    parse_query(&format!(
        "SELECT {member} UNION ALL SELECT * FROM pg_catalog.{name} WHERE {others}"
    ))
}

/// The column name PostgreSQL gives an identity function in a select list.
pub(crate) fn identity_column(expr: &Expr) -> Option<&'static str> {
    let name = match expr {
        Expr::Function(f) if matches!(f.args, FunctionArguments::None) && f.name.0.len() == 1 => {
            f.name.0[0].as_ident()?
        }
        // Keywords, never columns: sqlparser reads some as identifiers.
        Expr::Identifier(i) => i,
        _ => return None,
    };
    if name.quote_style.is_some() {
        return None;
    }
    match name.value.to_ascii_lowercase().as_str() {
        "current_user" => Some("current_user"),
        "session_user" => Some("session_user"),
        "user" => Some("current_user"),
        "current_role" => Some("current_role"),
        _ => None,
    }
}

/// Functions whose calls [`rewrite_call`] replaces, besides the identity
/// ones.
const ANSWERED: &[&str] = &[
    "getpgusername",
    "has_table_privilege",
    "has_any_column_privilege",
    "has_column_privilege",
    "has_schema_privilege",
    "has_database_privilege",
    "pg_has_role",
    "pg_database_size",
];

/// The column name PostgreSQL gives a select-list item that
/// [`rewrite_call`] replaces: an identity keyword's or the function's.
fn answered_column(expr: &Expr) -> Option<String> {
    if let Some(c) = identity_column(expr) {
        return Some(c.to_string());
    }
    let Expr::Function(f) = expr else {
        return None;
    };
    let name = function_name(&f.name)?;
    (ANSWERED.contains(&name.as_str())
        || SIZE_FUNCTIONS.contains(&name.as_str())
        || COUNTER_FUNCTIONS.iter().any(|(n, _)| *n == name))
    .then_some(name)
}

fn function_name(name: &ObjectName) -> Option<String> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| p.as_ident().map(fold))
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [f] => Some(f.clone()),
        [s, f] if s == "pg_catalog" => Some(f.clone()),
        _ => None,
    }
}

fn plain_args(args: &FunctionArguments) -> Option<Vec<&Expr>> {
    match args {
        FunctionArguments::List(list)
            if list.duplicate_treatment.is_none() && list.clauses.is_empty() =>
        {
            list.args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                    _ => None,
                })
                .collect()
        }
        _ => None,
    }
}

fn parse_expr(sql: &str) -> Result<Expr, Refusal> {
    let query = parse_query(&format!("SELECT {sql}"))?;
    match *query.body {
        sqlparser::ast::SetExpr::Select(select) => match select.projection.into_iter().next() {
            Some(SelectItem::UnnamedExpr(e)) => Ok(e),
            _ => Err(Refusal::unsupported("this expression")),
        },
        _ => Err(Refusal::unsupported("this expression")),
    }
}

/// The size functions, answered for visible relations only.
const SIZE_FUNCTIONS: &[&str] = &[
    "pg_relation_size",
    "pg_table_size",
    "pg_total_relation_size",
    "pg_indexes_size",
];

/// Statistics functions of one relation that count every session's
/// activity: NULL, as the views' counters are.
const COUNTER_FUNCTIONS: &[(&str, &str)] = &[
    ("pg_stat_get_numscans", "int8"),
    ("pg_stat_get_tuples_returned", "int8"),
    ("pg_stat_get_tuples_fetched", "int8"),
    ("pg_stat_get_blocks_fetched", "int8"),
    ("pg_stat_get_blocks_hit", "int8"),
];

/// Whether `name` is a function this module answers in expressions (in
/// FROM, where it is not answered, it must be refused).
pub(crate) fn answered_function(name: &ObjectName, cx: &Context) -> bool {
    if cx.access.role == Role::Admin {
        return false;
    }
    let Some(f) = function_name(name) else {
        return false;
    };
    ANSWERED.contains(&f.as_str())
        || SIZE_FUNCTIONS.contains(&f.as_str())
        || COUNTER_FUNCTIONS.iter().any(|(n, _)| *n == f)
        || matches!(
            f.as_str(),
            "current_user" | "session_user" | "user" | "current_role"
        )
}

/// Whether `name` is a function this module answers itself (so the
/// function list does not refuse it).
pub(crate) fn answers(name: &ObjectName, cx: &Context) -> bool {
    if cx.access.role == Role::Admin {
        return false;
    }
    let Some(f) = function_name(name) else {
        return false;
    };
    SIZE_FUNCTIONS.contains(&f.as_str())
        || f == "pg_database_size"
        || COUNTER_FUNCTIONS.iter().any(|(n, _)| *n == f)
}

/// Replaces a call a member makes that this module answers: identity
/// functions, privilege functions, size and counter functions. Other
/// expressions are left alone.
pub(crate) fn rewrite_call(expr: &mut Expr, cx: &Context) -> Result<(), Refusal> {
    if cx.access.role == Role::Admin {
        return Ok(());
    }
    if identity_column(expr).is_some() {
        *expr = parse_expr(&format!("{}::pg_catalog.name", lit(&cx.access.user)))?;
        return Ok(());
    }
    let Expr::Function(f) = &*expr else {
        return Ok(());
    };
    let Some(name) = function_name(&f.name) else {
        return Ok(());
    };
    let plain_call = f.over.is_none()
        && f.filter.is_none()
        && f.within_group.is_empty()
        && matches!(f.parameters, FunctionArguments::None);
    if !plain_call {
        // A window, filter or ordered-set clause on one of these is an
        // error in PostgreSQL; the call is not forwarded either way.
        if answered_column(expr).is_some() {
            return Err(Refusal::Function(name));
        }
        return Ok(());
    }
    if name == "getpgusername" && matches!(&f.args, FunctionArguments::List(l) if l.args.is_empty())
    {
        *expr = parse_expr(&format!("{}::pg_catalog.name", lit(&cx.access.user)))?;
        return Ok(());
    }
    let Some(args) = plain_args(&f.args) else {
        return Ok(());
    };
    let text: Vec<String> = args.iter().map(|a| format!("({a})")).collect();
    let original = format!("pg_catalog.{}({})", name, text.join(", "));
    // The forms that name a role first: the same function without it
    // checks the other arguments as PostgreSQL does (an unknown table is
    // an error), with the upstream role's privileges, which are then
    // narrowed to the member's.
    let without_role = format!(
        "pg_catalog.{}({})",
        name,
        text.get(1..).unwrap_or_default().join(", ")
    );
    let replacement = match (name.as_str(), text.as_slice()) {
        (f, [rel, ..]) if SIZE_FUNCTIONS.contains(&f) => format!(
            "(CASE WHEN {} THEN {original} END)",
            visible_oid(
                cx.access,
                &format!("{rel}::pg_catalog.regclass::pg_catalog.oid")
            )
        ),
        ("pg_database_size", [_]) => format!("(CASE WHEN false THEN {original} END)"),
        (f, [_]) if COUNTER_FUNCTIONS.iter().any(|(n, _)| *n == f) => {
            let ty = COUNTER_FUNCTIONS
                .iter()
                .find(|(n, _)| *n == f)
                .map(|(_, t)| *t)
                .unwrap_or("int8");
            format!("(CASE WHEN false THEN {original} END)::pg_catalog.{ty}")
        }
        ("has_table_privilege" | "has_any_column_privilege", [rel, privilege]) => {
            table_privilege(cx, &original, rel, privilege)
        }
        ("has_table_privilege" | "has_any_column_privilege", [who, rel, privilege]) => {
            for_member(cx, who, &table_privilege(cx, &without_role, rel, privilege))
        }
        ("has_column_privilege", [rel, _, privilege]) => {
            table_privilege(cx, &original, rel, privilege)
        }
        ("has_column_privilege", [who, rel, _, privilege]) => {
            for_member(cx, who, &table_privilege(cx, &without_role, rel, privilege))
        }
        ("has_schema_privilege", [schema, privilege]) => {
            schema_privilege(cx, &original, schema, privilege)
        }
        ("has_schema_privilege", [who, schema, privilege]) => for_member(
            cx,
            who,
            &schema_privilege(cx, &without_role, schema, privilege),
        ),
        ("has_database_privilege", [_, privilege]) => {
            format!("({original} AND {})", only(privilege, &["CONNECT"]))
        }
        ("has_database_privilege", [who, _, privilege]) => for_member(
            cx,
            who,
            &format!("({without_role} AND {})", only(privilege, &["CONNECT"])),
        ),
        ("pg_has_role", [role, _]) => {
            format!("({role}::pg_catalog.text = {})", lit(&cx.access.user))
        }
        ("pg_has_role", [who, role, _]) => for_member(
            cx,
            who,
            &format!("({role}::pg_catalog.text = {})", lit(&cx.access.user)),
        ),
        _ => return Ok(()),
    };
    *expr = parse_expr(&replacement)?;
    Ok(())
}

/// A privilege string holds one of `privileges` (PostgreSQL's privilege
/// functions answer true when any listed privilege is held); a grant option
/// is never held.
fn only(privilege: &str, privileges: &[&str]) -> String {
    let alternatives = privileges.join("|");
    format!("({privilege}::pg_catalog.text ~* '(^|,)\\s*({alternatives})\\s*(,|$)')")
}

fn table_privilege(cx: &Context, original: &str, rel: &str, privilege: &str) -> String {
    format!(
        "({original} AND {} AND {})",
        visible_oid(
            cx.access,
            &format!("{rel}::pg_catalog.regclass::pg_catalog.oid")
        ),
        only(privilege, &["SELECT"])
    )
}

fn schema_privilege(cx: &Context, original: &str, schema: &str, privilege: &str) -> String {
    format!(
        "({original} AND {} AND {})",
        visible_schema(
            cx.access,
            &format!("{schema}::pg_catalog.regnamespace::pg_catalog.oid")
        ),
        only(privilege, &["USAGE"])
    )
}

/// A privilege function's answer when asked about the member (by name),
/// false for any other role.
fn for_member(cx: &Context, who: &str, answer: &str) -> String {
    format!(
        "(CASE WHEN {who}::pg_catalog.text = {} THEN {answer} ELSE false END)",
        lit(&cx.access.user)
    )
}

/// Gives the select-list items whose calls [`rewrite_call`] replaces the
/// column name PostgreSQL would give them.
pub(crate) fn keep_answered_names(projection: &mut [SelectItem]) {
    for item in projection.iter_mut() {
        if let SelectItem::UnnamedExpr(e) = item {
            if let Some(column) = answered_column(e) {
                let e = e.clone();
                *item = SelectItem::ExprWithAlias {
                    expr: e,
                    alias: Ident::with_quote('"', column),
                };
            }
        }
    }
}
