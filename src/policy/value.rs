//! Attribute types and typed attribute values, checked when a policy loads and
//! turned into SQL literal nodes (never strings spliced into SQL).

use std::fmt;

use sqlparser::ast::{Expr, UnaryOperator, Value};

use super::raw::Scalar;

/// The type of a declared attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrType {
    Text,
    Integer,
    Numeric,
    Boolean,
    Date,
    Uuid,
}

impl AttrType {
    pub const NAMES: &'static str = "text, integer, numeric, boolean, date, uuid";

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "text" => AttrType::Text,
            "integer" => AttrType::Integer,
            "numeric" => AttrType::Numeric,
            "boolean" => AttrType::Boolean,
            "date" => AttrType::Date,
            "uuid" => AttrType::Uuid,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            AttrType::Text => "text",
            AttrType::Integer => "integer",
            AttrType::Numeric => "numeric",
            AttrType::Boolean => "boolean",
            AttrType::Date => "date",
            AttrType::Uuid => "uuid",
        }
    }

    /// Checks a value as written against this type; the error says why it
    /// does not fit.
    pub fn check(self, scalar: &Scalar) -> Result<AttrValue, String> {
        let misfit = || format!("`{scalar}` is not a valid {} value", self.name());
        match (self, scalar) {
            (AttrType::Text, s) => Ok(AttrValue::Text(s.to_string())),
            (AttrType::Integer, Scalar::Int(i)) if i64::try_from(*i).is_ok() => {
                Ok(AttrValue::Integer(*i as i64))
            }
            (AttrType::Integer, Scalar::Str(s)) => s
                .trim()
                .parse::<i64>()
                .map(AttrValue::Integer)
                .map_err(|_| misfit()),
            (AttrType::Numeric, Scalar::Int(i)) => Ok(AttrValue::Numeric(i.to_string())),
            (AttrType::Numeric, Scalar::Float(x)) if x.is_finite() => {
                Ok(AttrValue::Numeric(x.to_string()))
            }
            (AttrType::Numeric, Scalar::Str(s)) if is_decimal(s.trim()) => {
                Ok(AttrValue::Numeric(s.trim().to_string()))
            }
            (AttrType::Boolean, Scalar::Bool(b)) => Ok(AttrValue::Boolean(*b)),
            (AttrType::Boolean, Scalar::Str(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(AttrValue::Boolean(true)),
                "false" => Ok(AttrValue::Boolean(false)),
                _ => Err(misfit()),
            },
            (AttrType::Date, Scalar::Str(s)) if is_date(s.trim()) => {
                Ok(AttrValue::Date(s.trim().to_string()))
            }
            (AttrType::Uuid, Scalar::Str(s)) if is_uuid(s.trim()) => {
                Ok(AttrValue::Uuid(s.trim().to_ascii_lowercase()))
            }
            _ => Err(misfit()),
        }
    }
}

/// One attribute value, already checked against its type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AttrValue {
    Text(String),
    Integer(i64),
    /// A decimal number in its canonical written form.
    Numeric(String),
    Boolean(bool),
    /// `YYYY-MM-DD`.
    Date(String),
    /// Lower-case hyphenated form.
    Uuid(String),
}

impl AttrValue {
    /// The value as a SQL literal node. Text, dates and uuids are untyped
    /// string literals, so they take the column's type as PostgreSQL does
    /// for a literal in `column IN (...)`.
    pub fn to_expr(&self) -> Expr {
        match self {
            AttrValue::Text(s) | AttrValue::Date(s) | AttrValue::Uuid(s) => {
                Expr::value(Value::SingleQuotedString(s.clone()))
            }
            AttrValue::Integer(i) => number(&i.to_string()),
            AttrValue::Numeric(n) => number(n),
            AttrValue::Boolean(b) => Expr::value(Value::Boolean(*b)),
        }
    }
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Text(s) | AttrValue::Date(s) | AttrValue::Uuid(s) => f.write_str(s),
            AttrValue::Numeric(n) => f.write_str(n),
            AttrValue::Integer(i) => write!(f, "{i}"),
            AttrValue::Boolean(b) => write!(f, "{b}"),
        }
    }
}

/// A number literal as the parser would produce it: a sign is a unary operator.
fn number(text: &str) -> Expr {
    match text.strip_prefix('-') {
        Some(abs) => Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr: Box::new(number(abs)),
        },
        None => Expr::value(Value::Number(
            text.trim_start_matches('+').to_string(),
            false,
        )),
    }
}

fn is_decimal(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = (!int.is_empty() || !frac.is_empty()) && digits(int) && digits(frac);
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = &s[r];
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let (Some(year), Some(month), Some(day)) = (num(0..4), num(5..7), num(8..10)) else {
        return false;
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    year >= 1 && (1..=days).contains(&day)
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values() {
        let int = AttrType::Integer;
        assert_eq!(int.check(&Scalar::Int(7)), Ok(AttrValue::Integer(7)));
        assert_eq!(
            int.check(&Scalar::Str("42".into())),
            Ok(AttrValue::Integer(42))
        );
        assert!(int.check(&Scalar::Str("abc".into())).is_err());
        assert!(int.check(&Scalar::Float(1.5)).is_err());
        assert!(int.check(&Scalar::Int(i128::from(i64::MAX) + 1)).is_err());
        assert!(AttrType::Numeric
            .check(&Scalar::Str("1.5e3".into()))
            .is_ok());
        assert!(AttrType::Numeric
            .check(&Scalar::Str("1.5.3".into()))
            .is_err());
        assert!(AttrType::Numeric.check(&Scalar::Str(".".into())).is_err());
        assert!(AttrType::Date
            .check(&Scalar::Str("2024-02-29".into()))
            .is_ok());
        assert!(AttrType::Date
            .check(&Scalar::Str("2023-02-29".into()))
            .is_err());
        assert!(AttrType::Date
            .check(&Scalar::Str("2023-13-01".into()))
            .is_err());
        assert!(AttrType::Uuid
            .check(&Scalar::Str("123E4567-e89b-12d3-a456-426614174000".into()))
            .is_ok());
        assert!(AttrType::Uuid.check(&Scalar::Str("123".into())).is_err());
        assert!(AttrType::Boolean.check(&Scalar::Str("yes".into())).is_err());
        assert_eq!(
            AttrType::Text.check(&Scalar::Int(5)),
            Ok(AttrValue::Text("5".into()))
        );
    }

    #[test]
    fn literals_are_nodes() {
        let v = AttrValue::Text("O'Brien \\ \u{e9}".into());
        assert_eq!(v.to_expr().to_string(), "'O''Brien \\ \u{e9}'");
        assert_eq!(AttrValue::Integer(-3).to_expr().to_string(), "-3");
    }
}
