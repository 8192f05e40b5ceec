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

pub use load::{load_path, load_sources, Loaded, Source};
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

/// The one data source of this version: the `upstream:` of `proxy.yaml`.
pub const DEFAULT_DATA_SOURCE: &str = "default";

/// A group: grants and attribute values that its members inherit.
#[derive(Clone, Debug, Default)]
pub struct Group {
    pub tables: Vec<Grant>,
    pub attributes: BTreeMap<String, Values>,
    /// The access level it gives its members, if it says.
    pub access: Option<AccessLevel>,
}

/// An integration (an embedding back end): the grants, attribute values
/// and highest access level of the signed tokens that name it.
#[derive(Clone, Debug, Default)]
pub struct Integration {
    pub tables: Vec<Grant>,
    pub attributes: BTreeMap<String, Values>,
    /// The most its tokens may get (default read-only).
    pub access: AccessLevel,
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
    pub attributes: BTreeMap<String, Values>,
    /// The access level of the user's own, if the entry says.
    pub access: Option<AccessLevel>,
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

/// A complete, validated set of policies: what the proxy enforces.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    pub attributes: BTreeMap<String, AttrType>,
    pub groups: BTreeMap<String, Group>,
    pub integrations: BTreeMap<String, Integration>,
    pub users: BTreeMap<String, User>,
    pub tables: BTreeMap<RelName, TablePolicy>,
    /// User-defined functions members may call, schema-qualified.
    pub functions: BTreeSet<RelName>,
}

impl PolicySet {
    /// The type of an attribute, including the built-in `username`.
    pub fn attribute_type(&self, name: &str) -> Option<AttrType> {
        if name == USERNAME {
            return Some(AttrType::Text);
        }
        self.attributes.get(name).copied()
    }

    /// Resolves everything `user` may read and see; `None` for an unknown user.
    pub fn access(&self, user: &str) -> Option<Access> {
        resolve::resolve(self, user)
    }

    /// Resolves again the access of a session's login (a declared user, or
    /// a signed token's identity) against this policy set; `None` when it
    /// no longer resolves (the user, or the token's integration or a group
    /// it names, is gone).
    pub fn reresolve(&self, login: &Access) -> Option<Access> {
        match &login.token {
            Some(identity) => self.token_access(identity).ok(),
            None => self.access(&login.user),
        }
    }
}
