//! Attribute resolution (SPEC §3): a user's own value wins; otherwise the
//! union of their groups' values; `All` from any source that applies means
//! unrestricted; otherwise no value, which means no rows. The result, an
//! [`Access`], also holds each table's effective row filter as an AST
//! predicate, built once per session and cloned into every statement.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use sqlparser::ast::{
    BinaryOperator, Expr, GroupByExpr, Query, Select, SelectFlavor, SelectItem, SetExpr,
    TableFactor, TableWithJoins, Value,
};
use sqlparser::tokenizer::{Span, Token, TokenWithSpan};

use super::{
    AccessLevel, AttrValue, Filter, Grant, PolicySet, Role, TokenIdentity, Values, USERNAME,
};
use crate::names::{ident, RelName};

/// Where an attribute value or a grant came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The user's own entry.
    User,
    /// A group the user belongs to.
    Group(String),
    /// The login name (the built-in `username` attribute).
    Login,
    /// The signed token the user logged in with.
    Token,
    /// The integration a signed token names.
    Integration(String),
    /// Nothing gave a value: the default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::User => f.write_str("user"),
            Origin::Group(g) => write!(f, "group {g}"),
            Origin::Login => f.write_str("login name"),
            Origin::Token => f.write_str("token"),
            Origin::Integration(i) => write!(f, "integration {i}"),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// A user's effective values for one attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Unrestricted, and which sources said `All`.
    All(Vec<Origin>),
    /// These values, each with the sources that gave it; empty means no rows.
    Values(Vec<(AttrValue, Vec<Origin>)>),
}

impl fmt::Display for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origins = |o: &[Origin]| {
            o.iter()
                .map(|o| o.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Resolved::All(o) => write!(f, "All ({})", origins(o)),
            Resolved::Values(v) if v.is_empty() => f.write_str("(no value: no rows)"),
            Resolved::Values(v) => {
                let parts: Vec<String> = v
                    .iter()
                    .map(|(val, o)| format!("{val} ({})", origins(o)))
                    .collect();
                f.write_str(&parts.join(", "))
            }
        }
    }
}

/// Everything one user may read and see, resolved from a [`PolicySet`].
#[derive(Clone, Debug, PartialEq)]
pub struct Access {
    pub user: String,
    pub role: Role,
    pub groups: Vec<String>,
    /// Every grant, with where it came from.
    pub grants: Vec<(Grant, Origin)>,
    /// Every declared attribute, and `username`.
    pub attributes: BTreeMap<String, Resolved>,
    /// The row predicate of every table with a policy entry; `None` means the
    /// table shows every row to this user.
    filters: HashMap<RelName, Option<Expr>>,
    /// User-defined functions the policy allows.
    pub functions: BTreeSet<RelName>,
    /// The access level (read-write behaves as read-only until writes are
    /// supported), and what gave it.
    pub level: (AccessLevel, Vec<Origin>),
    /// The signed token's identity, for a token login.
    pub token: Option<std::sync::Arc<TokenIdentity>>,
    /// The data sources the user may use, with what listed each; empty:
    /// every source.
    pub data_sources: Vec<(String, Origin)>,
    /// The source used when a client names none, and what said so.
    pub default_data_source: Option<(String, Origin)>,
    /// Tables a read-write user may read but not write, with what said so.
    pub read_only: Vec<(Grant, Origin)>,
}

impl Access {
    /// Whether the user may use data source `source`.
    pub fn may_use_source(&self, source: &str) -> bool {
        self.data_sources.is_empty() || self.data_sources.iter().any(|(s, _)| s == source)
    }

    /// Whether the user may use schema `schema` as a native role holding
    /// its grants could (USAGE): the system schemas, and those its grants
    /// name. PostgreSQL's name lookup skips the others.
    pub fn may_use_schema(&self, schema: &str) -> bool {
        match self.role {
            Role::Admin | Role::Analyst => true,
            Role::Member => {
                schema == "pg_catalog"
                    || schema == "information_schema"
                    || self.grants.iter().any(|(g, _)| match g {
                        Grant::Table(t) => t.schema == schema,
                        Grant::Schema(s) => s == schema,
                    })
            }
        }
    }

    /// Whether the user may read `rel` at all (grants for members; analysts
    /// and admins read everything).
    pub fn may_read(&self, rel: &RelName) -> bool {
        match self.role {
            Role::Admin | Role::Analyst => true,
            Role::Member => self.grants.iter().any(|(g, _)| g.covers(rel)),
        }
    }

    /// The predicate rows of `rel` must satisfy for this user, or `None` when
    /// every row is visible.
    /// The attribute values with where each came from, for audit records:
    /// `{"country": {"all": ["group:ops"]}, "merchant": {"values":
    /// [{"value": "King Inc", "from": ["user"]}]}}`.
    pub fn attributes_json(&self) -> serde_json::Value {
        use serde_json::{json, Value};
        let origins = |os: &[Origin]| -> Value {
            Value::Array(
                os.iter()
                    .map(|o| match o {
                        Origin::User => "user".to_string(),
                        Origin::Group(g) => format!("group:{g}"),
                        Origin::Login => "login".to_string(),
                        Origin::Token => "token".to_string(),
                        Origin::Integration(i) => format!("integration:{i}"),
                        Origin::Default => "default".to_string(),
                    })
                    .map(Value::String)
                    .collect(),
            )
        };
        let mut out = serde_json::Map::new();
        for (name, resolved) in &self.attributes {
            let v = match resolved {
                Resolved::All(os) => json!({ "all": origins(os) }),
                Resolved::Values(vs) => json!({
                    "values": vs
                        .iter()
                        .map(|(v, os)| json!({ "value": v.to_string(), "from": origins(os) }))
                        .collect::<Vec<_>>()
                }),
            };
            out.insert(name.clone(), v);
        }
        Value::Object(out)
    }

    pub fn filter(&self, rel: &RelName) -> Option<&Expr> {
        match self.role {
            Role::Admin | Role::Analyst => None,
            Role::Member => self.filters.get(rel).and_then(Option::as_ref),
        }
    }

    /// The members of audit records that say how the user logged in:
    /// `auth` (`scram` or `token:<issuer>`) and, for a token, `token` (its
    /// `jti` or hash).
    pub fn auth_fields(&self, m: &mut serde_json::Map<String, serde_json::Value>) {
        m.insert("auth".into(), self.auth().into());
        if let Some(t) = &self.token {
            m.insert("token".into(), t.token_id.clone().into());
        }
    }

    /// How the user logged in, as audit records name it: `scram`, or
    /// `token:<issuer>`.
    pub fn auth(&self) -> String {
        match &self.token {
            None => "scram".to_string(),
            Some(t) => format!("token:{}", t.issuer),
        }
    }
}

/// One level a user's grants and values come from: their own entry (or
/// token), a group, an integration.
pub(super) struct Level<'a> {
    pub origin: Origin,
    pub tables: &'a [Grant],
    pub read_only: &'a [Grant],
    pub attributes: Option<&'a BTreeMap<String, Values>>,
    pub data_sources: &'a [String],
    pub default_data_source: Option<&'a String>,
}

/// Who is resolved: a name, a role, and the levels in priority order.
pub(super) struct Subject<'a> {
    pub name: &'a str,
    pub role: Role,
    /// Group names, as shown (a token's suborganization first).
    pub groups: Vec<String>,
    pub own: Option<Level<'a>>,
    pub group_levels: Vec<Level<'a>>,
    pub base: Option<Level<'a>>,
    pub level: (AccessLevel, Vec<Origin>),
    pub token: Option<std::sync::Arc<TokenIdentity>>,
}

pub(super) fn resolve(policy: &PolicySet, name: &str) -> Option<Access> {
    let user = policy.users.get(name)?;
    let group_levels: Vec<Level> = user
        .groups
        .iter()
        .map(|g| Level {
            origin: Origin::Group(g.clone()),
            tables: &policy.groups[g].tables,
            read_only: &policy.groups[g].read_only,
            attributes: Some(&policy.groups[g].attributes),
            data_sources: &policy.groups[g].data_sources,
            default_data_source: policy.groups[g].default_data_source.as_ref(),
        })
        .collect();
    // The highest level the user's entry and groups give.
    let mut level = (AccessLevel::ReadOnly, vec![Origin::Default]);
    let mut offer = |l: Option<AccessLevel>, o: Origin| {
        if let Some(l) = l {
            if l > level.0 || level.1 == [Origin::Default] {
                level = (l, vec![o]);
            } else if l == level.0 {
                level.1.push(o);
            }
        }
    };
    offer(user.access, Origin::User);
    for g in &user.groups {
        offer(policy.groups[g].access, Origin::Group(g.clone()));
    }
    Some(build(
        policy,
        Subject {
            name,
            role: user.role,
            groups: user.groups.clone(),
            own: Some(Level {
                origin: Origin::User,
                tables: &user.tables,
                read_only: &user.read_only,
                attributes: Some(&user.attributes),
                data_sources: &user.data_sources,
                default_data_source: user.default_data_source.as_ref(),
            }),
            group_levels,
            base: None,
            level,
            token: None,
        },
    ))
}

/// Grants (the union of every level's), attribute values (own > groups >
/// base) and filters of a subject.
pub(super) fn build(policy: &PolicySet, subject: Subject<'_>) -> Access {
    let mut grants: Vec<(Grant, Origin)> = Vec::new();
    let mut data_sources: Vec<(String, Origin)> = Vec::new();
    let mut default_data_source = None;
    let mut read_only: Vec<(Grant, Origin)> = Vec::new();
    let levels = subject
        .own
        .iter()
        .chain(&subject.group_levels)
        .chain(&subject.base);
    for level in levels {
        for g in level.tables {
            if !grants.iter().any(|(have, _)| have == g) {
                grants.push((g.clone(), level.origin.clone()));
            }
        }
        for g in level.read_only {
            if !read_only.iter().any(|(have, _)| have == g) {
                read_only.push((g.clone(), level.origin.clone()));
            }
        }
        for s in level.data_sources {
            if !data_sources.iter().any(|(have, _)| have == s) {
                data_sources.push((s.clone(), level.origin.clone()));
            }
        }
        // The most specific level's default wins (own > groups > base).
        if default_data_source.is_none() {
            default_data_source = level
                .default_data_source
                .map(|d| (d.clone(), level.origin.clone()));
        }
    }

    let mut attributes = BTreeMap::new();
    for attr in policy.attributes.keys() {
        attributes.insert(attr.clone(), resolve_attribute(&subject, attr));
    }
    let login = vec![(
        AttrValue::Text(subject.name.to_string()),
        vec![Origin::Login],
    )];
    attributes.insert(USERNAME.to_string(), Resolved::Values(login));

    let mut filters = HashMap::new();
    for rel in policy.tables.keys() {
        filters.insert(rel.clone(), predicate(policy, &attributes, rel, 0));
    }
    Access {
        user: subject.name.to_string(),
        role: subject.role,
        groups: subject.groups,
        grants,
        attributes,
        filters,
        functions: policy.functions.clone(),
        level: subject.level,
        token: subject.token,
        data_sources,
        default_data_source,
        read_only,
    }
}

/// One level's values for `attr`, if it gives any.
fn own_values(level: &Level<'_>, attr: &str) -> Option<Resolved> {
    let own = level.attributes?.get(attr)?;
    let origin = level.origin.clone();
    Some(match own {
        Values::All => Resolved::All(vec![origin]),
        Values::List(vs) => Resolved::Values(
            vs.iter()
                .map(|v| (v.clone(), vec![origin.clone()]))
                .collect(),
        ),
    })
}

fn resolve_attribute(subject: &Subject<'_>, attr: &str) -> Resolved {
    if let Some(own) = subject.own.as_ref().and_then(|l| own_values(l, attr)) {
        return own;
    }
    let mut any = false;
    let mut all_from = Vec::new();
    let mut values: Vec<(AttrValue, Vec<Origin>)> = Vec::new();
    for group in &subject.group_levels {
        let origin = group.origin.clone();
        match group.attributes.and_then(|a| a.get(attr)) {
            None => {}
            Some(Values::All) => {
                any = true;
                all_from.push(origin)
            }
            Some(Values::List(vs)) => {
                any = true;
                for v in vs {
                    match values.iter_mut().find(|(have, _)| have == v) {
                        Some((_, origins)) => origins.push(origin.clone()),
                        None => values.push((v.clone(), vec![origin.clone()])),
                    }
                }
            }
        }
    }
    if !all_from.is_empty() {
        return Resolved::All(all_from);
    }
    if any {
        return Resolved::Values(values);
    }
    subject
        .base
        .as_ref()
        .and_then(|l| own_values(l, attr))
        .unwrap_or(Resolved::Values(Vec::new()))
}

/// References are validated to be acyclic; this bound only guards against a
/// policy set that was built by hand without validation.
const MAX_REFERENCE_DEPTH: usize = 64;

/// The predicate of `rel` for these attribute values, columns qualified by
/// the table's own name. `None` means no restriction.
fn predicate(
    policy: &PolicySet,
    attributes: &BTreeMap<String, Resolved>,
    rel: &RelName,
    depth: usize,
) -> Option<Expr> {
    let table = policy.tables.get(rel)?;
    if depth > MAX_REFERENCE_DEPTH {
        return Some(Expr::value(Value::Boolean(false)));
    }
    let mut conjuncts = Vec::new();
    for filter in &table.filters {
        match filter {
            Filter::Attribute { column, attribute } => match attributes.get(attribute) {
                Some(Resolved::All(_)) => {}
                Some(Resolved::Values(vs)) if !vs.is_empty() => conjuncts.push(Expr::InList {
                    expr: Box::new(column_ref(rel, column)),
                    list: vs.iter().map(|(v, _)| v.to_expr()).collect(),
                    negated: false,
                }),
                _ => return Some(Expr::value(Value::Boolean(false))),
            },
            Filter::References {
                column,
                table: target,
                target_column,
            } => {
                let inner = predicate(policy, attributes, target, depth + 1);
                let is_false =
                    |e: &Expr| matches!(e, Expr::Value(v) if v.value == Value::Boolean(false));
                if inner.as_ref().is_some_and(is_false) {
                    return Some(Expr::value(Value::Boolean(false)));
                }
                let subquery = select_column(target, target_column, inner);
                conjuncts.push(Expr::InSubquery {
                    expr: Box::new(column_ref(rel, column)),
                    subquery: Box::new(subquery),
                    negated: false,
                });
            }
        }
    }
    and_all(conjuncts)
}

/// `a AND b AND ...`, each side parenthesized, or `None` for no conjuncts.
pub(crate) fn and_all(conjuncts: Vec<Expr>) -> Option<Expr> {
    let nest = |e: Expr| match e {
        Expr::BinaryOp { .. } => Expr::Nested(Box::new(e)),
        other => other,
    };
    let mut iter = conjuncts.into_iter();
    let first = iter.next()?;
    if iter.len() == 0 {
        return Some(first);
    }
    Some(iter.fold(nest(first), |acc, e| {
        Expr::Nested(Box::new(Expr::BinaryOp {
            left: Box::new(acc),
            op: BinaryOperator::And,
            right: Box::new(nest(e)),
        }))
    }))
}

fn column_ref(rel: &RelName, column: &str) -> Expr {
    Expr::CompoundIdentifier(vec![ident(&rel.name), ident(column)])
}

/// `SELECT rel.column FROM schema.rel [WHERE predicate]`.
pub(crate) fn select_column(rel: &RelName, column: &str, predicate: Option<Expr>) -> Query {
    select_from(
        rel,
        vec![SelectItem::UnnamedExpr(column_ref(rel, column))],
        predicate,
        None,
    )
}

/// `SELECT <projection> FROM schema.rel [sample] [WHERE predicate]`, the shape
/// of every filtered derived table.
pub(crate) fn select_from(
    rel: &RelName,
    projection: Vec<SelectItem>,
    predicate: Option<Expr>,
    sample: Option<sqlparser::ast::TableSampleKind>,
) -> Query {
    let relation = TableFactor::Table {
        name: rel.to_object_name(),
        alias: None,
        args: None,
        with_hints: vec![],
        version: None,
        with_ordinality: false,
        partitions: vec![],
        json_path: None,
        sample,
        index_hints: vec![],
    };
    let select = Select {
        select_token: TokenWithSpan::new(Token::make_keyword("SELECT"), Span::empty()).into(),
        optimizer_hints: vec![],
        distinct: None,
        select_modifiers: None,
        top: None,
        top_before_distinct: false,
        projection,
        exclude: None,
        into: None,
        from: vec![TableWithJoins {
            relation,
            joins: vec![],
        }],
        lateral_views: vec![],
        prewhere: None,
        selection: predicate,
        connect_by: vec![],
        group_by: GroupByExpr::Expressions(vec![], vec![]),
        cluster_by: vec![],
        distribute_by: vec![],
        sort_by: vec![],
        having: None,
        named_window: vec![],
        qualify: None,
        window_before_qualify: false,
        value_table_mode: None,
        flavor: SelectFlavor::Standard,
    };
    Query {
        with: None,
        body: Box::new(SetExpr::Select(Box::new(select))),
        order_by: None,
        limit_clause: None,
        fetch: None,
        locks: vec![],
        for_clause: None,
        settings: None,
        format_clause: None,
        pipe_operators: vec![],
    }
}
