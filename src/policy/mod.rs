//! The policy model: attributes, groups, users, table rules and grants, as
//! loaded and validated from the YAML policy files (SPEC §3), and the
//! resolution of one user's effective access.

mod load;
pub mod raw;
mod resolve;
mod token;
mod value;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

pub use load::{load_path, load_path_for, load_sources, load_sources_for, Loaded, Source};
pub(crate) use resolve::{and_all, select_from};
pub use resolve::{Access, Origin, Resolved};
pub use token::TokenIdentity;
pub use value::{AttrType, AttrValue};

use crate::names::RelName;

/// The built-in attribute that always holds the login name.
pub const USERNAME: &str = "username";

/// What a user may do (SPEC §3 "Roles").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Statements pass unchanged; no grants needed.
    Admin,
    /// Reads every table with no row filters; read-only.
    Analyst,
    /// Reads only granted tables with every row filter applied; read-only.
    Member,
}

impl Role {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "admin" => Some(Role::Admin),
            "analyst" => Some(Role::Analyst),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Analyst => "analyst",
            Role::Member => "member",
        }
    }
}

/// A table grant: one relation, or every relation of a schema (`schema.*`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grant {
    Table(RelName),
    Schema(String),
}

impl Grant {
    pub fn covers(&self, rel: &RelName) -> bool {
        match self {
            Grant::Table(t) => t == rel,
            Grant::Schema(s) => *s == rel.schema,
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Table(t) => t.fmt(f),
            Grant::Schema(s) => write!(f, "{}.*", crate::names::ident(s)),
        }
    }
}

/// Values given to an attribute by a user or a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Values {
    /// `All`: no restriction.
    All,
    List(Vec<AttrValue>),
}

/// What a user may do to the rows they see: `read-only` or `read-write`
/// (read-write members' writes are a later issue; until then both read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum AccessLevel {
    #[default]
    ReadOnly,
    ReadWrite,
}

impl AccessLevel {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "read-only" => Some(AccessLevel::ReadOnly),
            "read-write" => Some(AccessLevel::ReadWrite),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AccessLevel::ReadOnly => "read-only",
            AccessLevel::ReadWrite => "read-write",
        }
    }
}

/// The data source `upstream:` of `proxy.yaml` declares.
pub const DEFAULT_DATA_SOURCE: &str = crate::config::DEFAULT_DATA_SOURCE;

/// A group: grants and attribute values that its members inherit.
#[derive(Clone, Debug, Default)]
pub struct Group {
    pub tables: Vec<Grant>,
    /// Tables its read-write members may read but not write.
    pub read_only: Vec<Grant>,
    pub attributes: BTreeMap<String, Values>,
    /// The access level it gives its members, if it says.
    pub access: Option<AccessLevel>,
    /// The data sources its members may use (none listed: no restriction
    /// from this group).
    pub data_sources: Vec<String>,
    pub default_data_source: Option<String>,
}

/// An integration (an embedding back end): the grants, attribute values
/// and highest access level of the signed tokens that name it.
#[derive(Clone, Debug, Default)]
pub struct Integration {
    pub tables: Vec<Grant>,
    pub read_only: Vec<Grant>,
    pub attributes: BTreeMap<String, Values>,
    /// The most its tokens may get (default read-only).
    pub access: AccessLevel,
    pub data_sources: Vec<String>,
    pub default_data_source: Option<String>,
}

/// How a client proves who it is.
#[derive(Clone, PartialEq, Eq)]
pub enum Password {
    /// A SCRAM-SHA-256 verifier as `rowgate passwd` prints it.
    Scram(String),
    /// A plain-text password (`check` warns about it).
    Plain(String),
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Password::Scram(_) => f.write_str("Scram(<redacted>)"),
            Password::Plain(_) => f.write_str("Plain(<redacted>)"),
        }
    }
}

/// A user of the proxy.
#[derive(Clone, Debug)]
pub struct User {
    pub password: Password,
    pub role: Role,
    pub groups: Vec<String>,
    pub tables: Vec<Grant>,
    pub read_only: Vec<Grant>,
    pub attributes: BTreeMap<String, Values>,
    /// The access level of the user's own, if the entry says.
    pub access: Option<AccessLevel>,
    pub data_sources: Vec<String>,
    pub default_data_source: Option<String>,
}

/// One row filter of a table (SPEC §3 "Filters").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    /// The column's value is one of the user's values for the attribute.
    Attribute { column: String, attribute: String },
    /// The column's value is a `target_column` of a row of `table` that the
    /// user can see.
    References {
        column: String,
        table: RelName,
        target_column: String,
    },
}

/// The row rules of one table: every filter must hold (AND).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TablePolicy {
    pub filters: Vec<Filter>,
}

/// A complete, validated set of policies for one data source: what the
/// proxy enforces on it.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    /// The data source whose tables and grants these are.
    pub data_source: String,
    pub attributes: BTreeMap<String, AttrType>,
    pub groups: BTreeMap<String, Group>,
    pub integrations: BTreeMap<String, Integration>,
    pub users: BTreeMap<String, User>,
    pub tables: BTreeMap<RelName, TablePolicy>,
    /// User-defined functions members may call, schema-qualified.
    pub functions: BTreeSet<RelName>,
    /// Each declared user's access, resolved once and shared by all of
    /// their sessions.
    resolved: AccessCache,
}

/// Declared users' resolved access. A policy set is not changed once
/// sessions use it (a reload makes new sets), so an entry stays right for
/// the set's life; a copy of the set starts empty, since a copy may be
/// changed before use.
#[derive(Default)]
struct AccessCache(dashmap::DashMap<String, Option<Arc<Access>>>);

impl Clone for AccessCache {
    fn clone(&self) -> Self {
        AccessCache::default()
    }
}

impl fmt::Debug for AccessCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessCache({} users)", self.0.len())
    }
}

impl PolicySet {
    /// The type of an attribute, including the built-in `username`.
    pub fn attribute_type(&self, name: &str) -> Option<AttrType> {
        if name == USERNAME {
            return Some(AttrType::Text);
        }
        self.attributes.get(name).copied()
    }

    /// Resolves everything `user` may read and see; `None` for an unknown
    /// user. A declared user is resolved once per policy set: their
    /// sessions share it.
    pub fn access(&self, user: &str) -> Option<Arc<Access>> {
        if let Some(known) = self.resolved.0.get(user) {
            return known.clone();
        }
        // Only declared names are kept, so that names clients make up
        // take no memory.
        let access = resolve::resolve(self, user).map(Arc::new);
        if self.users.contains_key(user) {
            self.resolved.0.insert(user.to_string(), access.clone());
        }
        access
    }

    /// Resolves again the access of a session's login (a declared user, or
    /// a signed token's identity) against this policy set; `None` when it
    /// no longer resolves (the user, or the token's integration or a group
    /// it names, is gone).
    pub fn reresolve(&self, login: &Access) -> Option<Arc<Access>> {
        match &login.token {
            Some(identity) => self.token_access(identity).ok().map(Arc::new),
            None => self.access(&login.user),
        }
    }
}

/// Every data source's policy set. Users, groups, integrations and
/// attributes are the same in each; tables and grants are per source.
#[derive(Clone, Debug)]
pub struct Policies {
    by_source: BTreeMap<String, std::sync::Arc<PolicySet>>,
    main: std::sync::Arc<PolicySet>,
}

/// Why a session cannot use a data source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceRefusal {
    /// The user may not use the source the client asked for.
    NotAllowed(String),
    /// The client named no source the user may use, and nothing says
    /// which one to use.
    NoDefault,
}

impl fmt::Display for SourceRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceRefusal::NotAllowed(s) => write!(
                f,
                "permission denied for data source \"{}\"",
                crate::tokens::printable(s)
            ),
            SourceRefusal::NoDefault => f.write_str(
                "no data source to use: connect with the name of a data source as the database",
            ),
        }
    }
}

impl Policies {
    /// From one set per data source; a set with no source (built by hand)
    /// stands for `default`.
    pub fn new(by_source: BTreeMap<String, PolicySet>) -> Policies {
        let mut by_source: BTreeMap<String, std::sync::Arc<PolicySet>> = by_source
            .into_iter()
            .map(|(k, v)| (k, std::sync::Arc::new(v)))
            .collect();
        if by_source.is_empty() {
            let p = PolicySet {
                data_source: DEFAULT_DATA_SOURCE.to_string(),
                ..PolicySet::default()
            };
            by_source.insert(DEFAULT_DATA_SOURCE.to_string(), std::sync::Arc::new(p));
        }
        let main = by_source
            .get(DEFAULT_DATA_SOURCE)
            .or_else(|| by_source.values().next())
            .cloned()
            .unwrap_or_default();
        Policies { by_source, main }
    }

    /// One policy set for the single data source `default`.
    pub fn single(mut policy: PolicySet) -> Policies {
        policy.data_source = DEFAULT_DATA_SOURCE.to_string();
        Policies::new(BTreeMap::from([(DEFAULT_DATA_SOURCE.to_string(), policy)]))
    }

    /// The set of `default`, or of the first source.
    pub fn main(&self) -> &PolicySet {
        &self.main
    }

    pub fn get(&self, source: &str) -> Option<&std::sync::Arc<PolicySet>> {
        self.by_source.get(source)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &std::sync::Arc<PolicySet>)> {
        self.by_source.iter()
    }

    /// The data source a session of `access` uses when its client asked
    /// for database `requested`: that source, if it is one (and the user
    /// may use it); otherwise the user's default source, else `default`,
    /// else the only source the user may use.
    pub fn choose(&self, access: &Access, requested: &str) -> Result<String, SourceRefusal> {
        let usable = |s: &str| access.may_use_source(s) && self.by_source.contains_key(s);
        if self.by_source.contains_key(requested) {
            return if usable(requested) {
                Ok(requested.to_string())
            } else {
                Err(SourceRefusal::NotAllowed(requested.to_string()))
            };
        }
        if let Some((d, _)) = &access.default_data_source {
            if usable(d) {
                return Ok(d.clone());
            }
        }
        if usable(DEFAULT_DATA_SOURCE) {
            return Ok(DEFAULT_DATA_SOURCE.to_string());
        }
        let mut mine = self.by_source.keys().filter(|s| usable(s));
        match (mine.next(), mine.next()) {
            (Some(only), None) => Ok(only.clone()),
            _ => Err(SourceRefusal::NoDefault),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "
attributes:
  region: { type: text }
users:
  ann:
    password: x
    tables: [public.orders]
    attributes: { region: [EMEA] }
  bob:
    password: x
    tables: [public.orders]
    attributes: { region: [APAC] }
tables:
  public.orders:
    filters:
      - { column: region, attribute: region }
";

    fn policy() -> PolicySet {
        let sources = [Source {
            path: "p.yaml".into(),
            text: POLICY.into(),
        }];
        load_sources(&sources).unwrap().policy().clone()
    }

    #[test]
    fn a_declared_users_access_is_resolved_once_and_shared() {
        let p = policy();
        let first = p.access("ann").expect("ann is declared");
        let again = p.access("ann").expect("ann is declared");
        assert!(Arc::ptr_eq(&first, &again), "one value for every session");
        assert_eq!(*first, resolve::resolve(&p, "ann").unwrap());
        let bob = p.access("bob").expect("bob is declared");
        assert!(!Arc::ptr_eq(&first, &bob));
        assert_ne!(
            first.filter(&RelName::new("public", "orders")),
            bob.filter(&RelName::new("public", "orders"))
        );
        // Re-resolving a declared login gives the shared value too.
        let re = p.reresolve(&first).expect("ann still resolves");
        assert!(Arc::ptr_eq(&first, &re));
    }

    #[test]
    fn unknown_names_are_not_kept_and_copies_start_empty() {
        let p = policy();
        for i in 0..100 {
            assert!(p.access(&format!("nobody{i}")).is_none());
        }
        assert_eq!(
            p.resolved.0.len(),
            0,
            "names clients make up take no memory"
        );
        let ann = p.access("ann").unwrap();
        assert_eq!(p.resolved.0.len(), 1);
        // A copy may be changed before use: it resolves afresh.
        let mut copy = p.clone();
        assert_eq!(copy.resolved.0.len(), 0);
        copy.users.get_mut("ann").unwrap().attributes.clear();
        let changed = copy.access("ann").unwrap();
        assert_ne!(*changed, *ann);
    }
}
