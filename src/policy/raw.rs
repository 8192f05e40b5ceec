//! The policy file format exactly as written: serde structs that keep the
//! position of every name and value so that validation can point at it.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

/// A mapping whose keys and values keep their positions.
pub type Map<T> = HashMap<Spanned<String>, Spanned<T>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub attributes: Option<Map<Attribute>>,
    #[serde(default)]
    pub groups: Option<Map<Group>>,
    #[serde(default)]
    pub users: Option<Map<User>>,
    #[serde(default)]
    pub tables: Option<Map<Table>>,
    #[serde(default)]
    pub functions: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attribute {
    #[serde(rename = "type")]
    pub ty: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    #[serde(default)]
    pub tables: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub attributes: Option<Map<Values>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    #[serde(default)]
    pub password: Option<Spanned<String>>,
    #[serde(default)]
    pub role: Option<Spanned<String>>,
    #[serde(default)]
    pub groups: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub tables: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub attributes: Option<Map<Values>>,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("role", &self.role)
            .field("groups", &self.groups)
            .field("tables", &self.tables)
            .field("attributes", &self.attributes)
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    #[serde(default)]
    pub filters: Option<Vec<Spanned<Filter>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub column: Spanned<String>,
    #[serde(default)]
    pub attribute: Option<Spanned<String>>,
    #[serde(default)]
    pub references: Option<Spanned<String>>,
}

/// A YAML scalar as written, before it is checked against an attribute type.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Str(String),
    Int(i128),
    Float(f64),
    Bool(bool),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Str(s) => f.write_str(s),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl Visitor<'_> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a single value (text, number, boolean or date)")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Str(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
}

/// An attribute's values as written: one scalar (`All`, `Vietnam`) or a list.
#[derive(Debug)]
pub enum Values {
    One(Scalar),
    List(Vec<Spanned<Scalar>>),
}

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValuesVisitor)
    }
}

struct ValuesVisitor;

impl<'de> Visitor<'de> for ValuesVisitor {
    type Value = Values;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("`All`, a value, or a list of values")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Values, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Scalar>>()? {
            items.push(item);
        }
        Ok(Values::List(items))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Values, E> {
        ScalarVisitor.visit_str(v).map(Values::One)
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Values, E> {
        ScalarVisitor.visit_string(v).map(Values::One)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Values, E> {
        ScalarVisitor.visit_i64(v).map(Values::One)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Values, E> {
        ScalarVisitor.visit_u64(v).map(Values::One)
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Values, E> {
        ScalarVisitor.visit_i128(v).map(Values::One)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Values, E> {
        ScalarVisitor.visit_f64(v).map(Values::One)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Values, E> {
        ScalarVisitor.visit_bool(v).map(Values::One)
    }
}
