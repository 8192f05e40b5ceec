//! The policy file format exactly as written (SPEC §3): every name and value
//! keeps its position so that validation can point at it. Files are read with
//! [`crate::diag::read`]: an unknown key or a value of the wrong shape is
//! reported where it stands and the rest of the file is still read.

use std::fmt;

use serde::de::SeqAccess;
use serde_saphyr::{Location, Spanned};

use crate::diag::{self, yaml_struct, Entries, List, Shape, Text};

/// The named entries of a mapping, in the order they are written.
pub type Map<T> = Vec<(Spanned<String>, Spanned<T>)>;

yaml_struct! {
    /// One policy file.
    #[derive(Debug)]
    pub struct File: "a mapping with keys attributes, groups, users, tables, functions, integrations" {
        "attributes" => attributes: Map<Attribute> as Entries<Attribute>,
        "groups" => groups: Map<Group> as Entries<Group>,
        "users" => users: Map<User> as Entries<User>,
        "tables" => tables: Map<Table> as Entries<Table>,
        "functions" => functions: Vec<Spanned<String>> as List<Text>,
        "integrations" => integrations: Map<Integration> as Entries<Integration>,
    }
}

yaml_struct! {
    /// A declared attribute.
    #[derive(Debug)]
    pub struct Attribute: "a mapping like { type: text }" {
        "type" => ty: Spanned<String> as Text,
    }
}

yaml_struct! {
    /// A group: grants and attribute values its members inherit.
    #[derive(Debug)]
    pub struct Group: "a mapping with keys tables, read_only, attributes, access, data_sources, default_data_source" {
        "tables" => tables: Vec<Spanned<String>> as List<Text>,
        "read_only" => read_only: Vec<Spanned<String>> as List<Text>,
        "attributes" => attributes: Map<Values> as Entries<ValuesNode>,
        "access" => access: Spanned<String> as Text,
        "data_sources" => data_sources: Vec<Spanned<String>> as List<Text>,
        "default_data_source" => default_data_source: Spanned<String> as Text,
    }
}

yaml_struct! {
    /// An integration: what the signed tokens naming it start from.
    #[derive(Debug)]
    pub struct Integration: "a mapping with keys tables, read_only, attributes, access, data_sources, default_data_source" {
        "tables" => tables: Vec<Spanned<String>> as List<Text>,
        "read_only" => read_only: Vec<Spanned<String>> as List<Text>,
        "attributes" => attributes: Map<Values> as Entries<ValuesNode>,
        "access" => access: Spanned<String> as Text,
        "data_sources" => data_sources: Vec<Spanned<String>> as List<Text>,
        "default_data_source" => default_data_source: Spanned<String> as Text,
    }
}

yaml_struct! {
    /// A user of the proxy.
    pub struct User: "a mapping with keys password, role, groups, tables, read_only, attributes, access, data_sources, default_data_source" {
        "password" => password: Spanned<String> as Text,
        "role" => role: Spanned<String> as Text,
        "groups" => groups: Vec<Spanned<String>> as List<Text>,
        "tables" => tables: Vec<Spanned<String>> as List<Text>,
        "read_only" => read_only: Vec<Spanned<String>> as List<Text>,
        "attributes" => attributes: Map<Values> as Entries<ValuesNode>,
        "access" => access: Spanned<String> as Text,
        "data_sources" => data_sources: Vec<Spanned<String>> as List<Text>,
        "default_data_source" => default_data_source: Spanned<String> as Text,
    }
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("role", &self.role)
            .field("groups", &self.groups)
            .field("tables", &self.tables)
            .field("attributes", &self.attributes)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

yaml_struct! {
    /// The row rules of one table.
    #[derive(Debug)]
    pub struct Table: "a mapping with the key filters" {
        "filters" => filters: Vec<Spanned<Filter>> as List<Filter>,
    }
}

yaml_struct! {
    /// One row filter: `column` with either `attribute` or `references`.
    #[derive(Debug)]
    pub struct Filter: "a filter, like { column: c, attribute: a }" {
        "column" => column: Spanned<String> as Text,
        "attribute" => attribute: Spanned<String> as Text,
        "references" => references: Spanned<String> as Text,
    }
}

/// An attribute's values as written: one value (`All`, `Vietnam`) or a list.
/// Each value is its text exactly as written (see [`Text`]), to be checked
/// against the attribute's type.
#[derive(Debug)]
pub enum Values {
    One(String),
    List(Vec<Spanned<String>>),
}

/// [`Values`] as read, before the position of a single value is known.
pub enum ValuesNode {
    One(Text),
    List(Vec<Spanned<String>>),
}

/// What each value of a list must be.
const VALUE: &str = "a single value (text, number, boolean or date)";

impl Shape for ValuesNode {
    type Out = Spanned<Values>;
    const EXPECTED: &'static str = "`All`, a value, or a list of values";
    const ENTRIES: &'static str = "a mapping of attributes to values, like { country: [Vietnam] }";

    fn scalar(text: Text) -> Option<Self> {
        Some(ValuesNode::One(text))
    }

    fn seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut values = Vec::new();
        while let Some(value) = diag::item::<Text, A>(&mut seq, VALUE)? {
            values.extend(value);
        }
        Ok(Some(ValuesNode::List(values)))
    }

    fn finish(self, referenced: Location, defined: Location) -> Spanned<Values> {
        let values = match self {
            ValuesNode::One(text) => Values::One(text.finish(referenced, defined).value),
            ValuesNode::List(list) => Values::List(list),
        };
        Spanned::new(values, referenced, defined)
    }
}
