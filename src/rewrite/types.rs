//! PostgreSQL's type system as far as rowgate needs it to decide what a
//! condition executes: types (with their categories, preferred types and
//! domains), operators, casts and functions of `pg_catalog`, each with
//! whether its function is leakproof. Loaded from the upstream's catalog;
//! offline there is none, and every question about a typed operation gets
//! "not known", which callers treat as "not leakproof".
//!
//! Operator and function resolution follow PostgreSQL's documented
//! algorithm (chapter "Type Conversion": exact match, then implicit
//! coercions, most exact matches, preferred types, unknown literals by
//! category). Where the algorithm would need more than this model holds
//! (variadic functions, default arguments, generic types it cannot pin),
//! resolution answers `None`.

use std::collections::{HashMap, HashSet};

/// A PostgreSQL object id.
pub type Oid = u32;

pub const BOOL: Oid = 16;
pub const INT8: Oid = 20;
pub const INT2: Oid = 21;
pub const INT4: Oid = 23;
pub const TEXT: Oid = 25;
pub const FLOAT4: Oid = 700;
pub const FLOAT8: Oid = 701;
pub const UNKNOWN: Oid = 705;
pub const BPCHAR: Oid = 1042;
pub const VARCHAR: Oid = 1043;
pub const DATE: Oid = 1082;
pub const TIME: Oid = 1083;
pub const TIMESTAMP: Oid = 1114;
pub const TIMESTAMPTZ: Oid = 1184;
pub const INTERVAL: Oid = 1186;
pub const TIMETZ: Oid = 1266;
pub const NUMERIC: Oid = 1700;

/// One row of `pg_type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeInfo {
    pub name: String,
    /// `typcategory`: `N` numeric, `S` string, `D` date/time, `A` array,
    /// `P` pseudo, ...
    pub category: u8,
    pub preferred: bool,
    /// `typtype`: `b` base, `d` domain, `e` enum, `r` range, `p` pseudo, ...
    pub kind: u8,
    /// The base type of a domain (0 otherwise).
    pub base: Oid,
    /// The element type of an array type (0 otherwise).
    pub elem: Oid,
    /// The array type of this type (0 if none).
    pub array: Oid,
}

/// One operator (of any schema: an extension's operators take part in
/// resolution where their schema is on the search path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub schema: String,
    /// 0 for a prefix operator.
    pub left: Oid,
    pub right: Oid,
    pub result: Oid,
    /// Whether the implementing function is leakproof.
    pub leakproof: bool,
}

/// One row of `pg_cast`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cast {
    /// `i` implicit, `a` assignment, `e` explicit only.
    pub context: u8,
    /// `f` function, `b` binary coercible, `i` input/output.
    pub method: u8,
    /// Whether the cast function is leakproof (binary casts run none).
    pub leakproof: bool,
}

/// One function, aggregate or window function (of any schema).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub schema: String,
    /// An aggregate or window function (`prokind` `a` or `w`).
    pub aggregate: bool,
    pub args: Vec<Oid>,
    pub result: Oid,
    pub leakproof: bool,
    /// Variadic, or with default arguments, or set-returning: resolution
    /// does not model these, so a name with any such overload resolves to
    /// nothing.
    pub irregular: bool,
    /// Returns a set.
    pub set_returning: bool,
}

/// The type system of one database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeCatalog {
    pub types: HashMap<Oid, TypeInfo>,
    /// Types of `pg_catalog` by name.
    pub names: HashMap<String, Oid>,
    pub operators: HashMap<String, Vec<Operator>>,
    pub casts: HashMap<(Oid, Oid), Cast>,
    pub functions: HashMap<String, Vec<Function>>,
}

/// Whether objects of `schema` are found by an unqualified name along
/// `path` (`pg_catalog` always is).
fn visible(schema: &str, path: &[String]) -> bool {
    schema == "pg_catalog" || path.iter().any(|p| p == schema)
}

/// The type of an argument as resolution sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    Known(Oid),
    /// An untyped literal (`'...'`, `NULL`) or a parameter of unspecified type.
    Unknown,
}

impl Ty {
    fn oid(self) -> Oid {
        match self {
            Ty::Known(t) => t,
            Ty::Unknown => UNKNOWN,
        }
    }
}

/// A resolved call: the declared argument types of the chosen operator or
/// function, its result, and whether its own function is leakproof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub args: Vec<Oid>,
    pub result: Oid,
    pub leakproof: bool,
}

impl TypeCatalog {
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    fn info(&self, t: Oid) -> Option<&TypeInfo> {
        self.types.get(&t)
    }

    /// A domain's base type (through nested domains), or the type itself.
    pub fn base(&self, mut t: Oid) -> Oid {
        for _ in 0..16 {
            match self.info(t) {
                Some(i) if i.kind == b'd' && i.base != 0 => t = i.base,
                _ => break,
            }
        }
        t
    }

    fn category(&self, t: Oid) -> u8 {
        self.info(t).map_or(b'X', |i| i.category)
    }

    fn preferred(&self, t: Oid) -> bool {
        self.info(t).is_some_and(|i| i.preferred)
    }

    fn is_polymorphic(&self, t: Oid) -> bool {
        self.info(t).is_some_and(|i| i.kind == b'p')
            && matches!(
                self.info(t).map(|i| i.name.as_str()),
                Some(
                    "anyelement"
                        | "anyarray"
                        | "anynonarray"
                        | "anyenum"
                        | "anyrange"
                        | "anymultirange"
                        | "anycompatible"
                        | "anycompatiblearray"
                        | "anycompatiblenonarray"
                        | "anycompatiblerange"
                        | "anycompatiblemultirange"
                        | "any"
                )
            )
    }

    /// The element type of an array type.
    pub fn element(&self, t: Oid) -> Option<Oid> {
        self.info(self.base(t))
            .filter(|i| i.elem != 0 && i.category == b'A')
            .map(|i| i.elem)
    }

    /// The array type whose elements are `t`.
    pub fn array_of(&self, t: Oid) -> Option<Oid> {
        self.info(t).map(|i| i.array).filter(|a| *a != 0)
    }

    /// A polymorphic parameter accepts `input` (generously: the consistency
    /// of several polymorphic arguments is not checked).
    fn polymorphic_accepts(&self, declared: Oid, input: Oid) -> bool {
        let Some(name) = self.info(declared).map(|i| i.name.as_str()) else {
            return false;
        };
        if input == UNKNOWN {
            return true;
        }
        let input = self.base(input);
        let info = self.info(input);
        let is_array = self.element(input).is_some();
        let kind = info.map_or(0, |i| i.kind);
        match name {
            "any" | "anyelement" | "anycompatible" => true,
            "anynonarray" | "anycompatiblenonarray" => !is_array,
            "anyarray" | "anycompatiblearray" => is_array,
            "anyenum" => kind == b'e',
            "anyrange" | "anycompatiblerange" => kind == b'r',
            "anymultirange" | "anycompatiblemultirange" => kind == b'm',
            _ => false,
        }
    }

    /// Whether a value of type `input` can be coerced implicitly to
    /// `declared` (PostgreSQL's `can_coerce_type` for implicit context).
    pub fn coerces_implicitly(&self, input: Oid, declared: Oid) -> bool {
        if input == declared || input == UNKNOWN {
            return true;
        }
        if self.is_polymorphic(declared) {
            return self.polymorphic_accepts(declared, input);
        }
        let base = self.base(input);
        if base == declared {
            return true;
        }
        self.casts
            .get(&(base, declared))
            .is_some_and(|c| c.context == b'i')
    }

    /// Whether the implicit coercion of a non-constant value of type
    /// `input` to `declared` runs only leakproof code.
    pub fn coercion_is_leakproof(&self, input: Oid, declared: Oid) -> bool {
        if input == declared || input == UNKNOWN || self.is_polymorphic(declared) {
            return true;
        }
        let base = self.base(input);
        if base == declared {
            return true;
        }
        self.casts
            .get(&(base, declared))
            .is_some_and(|c| c.method == b'b' || (c.method == b'f' && c.leakproof))
    }

    /// An explicit cast of a non-constant value: whether it runs only
    /// leakproof code, `None` when no cast path is known.
    pub fn cast_is_leakproof(&self, input: Oid, target: Oid) -> Option<bool> {
        if input == target {
            return Some(true);
        }
        let base = self.base(input);
        if base == target {
            return Some(true);
        }
        if self.info(target).is_some_and(|i| i.kind == b'd') {
            // Domain constraints can run any function.
            return Some(false);
        }
        match self.casts.get(&(base, target)) {
            Some(c) => Some(c.method == b'b' || (c.method == b'f' && c.leakproof)),
            // Input/output conversion to or from a string type.
            None => Some(false),
        }
    }

    /// Whether `name` along `path` is an aggregate or window function only
    /// (a plain function of that name makes it not so: then a call may be
    /// either, and is judged as a plain one).
    pub fn is_aggregate(&self, name: &str, path: &[String]) -> bool {
        let mut found = self
            .functions
            .get(name)
            .into_iter()
            .flatten()
            .filter(|f| visible(&f.schema, path))
            .peekable();
        found.peek().is_some() && found.all(|f| f.aggregate)
    }

    /// Resolves an operator call as PostgreSQL does, among the operators
    /// of `pg_catalog` and of the schemas of `path`. `left` is `None` for a
    /// prefix operator.
    pub fn operator(
        &self,
        name: &str,
        left: Option<Ty>,
        right: Ty,
        path: &[String],
    ) -> Option<Resolved> {
        let ops = self.operators.get(name)?;
        let candidates: Vec<Resolved> = ops
            .iter()
            .filter(|o| visible(&o.schema, path))
            .filter(|o| (o.left == 0) == left.is_none())
            .map(|o| Resolved {
                args: match left {
                    Some(_) => vec![o.left, o.right],
                    None => vec![o.right],
                },
                result: o.result,
                leakproof: o.leakproof,
            })
            .collect();
        let inputs: Vec<Ty> = left.into_iter().chain([right]).collect();
        // Step 2: an exact match, an unknown side taken to be the other's
        // type (and then the base type of a domain).
        if let [l, r] = inputs.as_slice() {
            let pairs: Vec<(Oid, Oid)> = match (l, r) {
                (Ty::Known(a), Ty::Known(b)) => vec![(*a, *b)],
                (Ty::Unknown, Ty::Known(b)) => vec![(*b, *b), (self.base(*b), self.base(*b))],
                (Ty::Known(a), Ty::Unknown) => vec![(*a, *a), (self.base(*a), self.base(*a))],
                (Ty::Unknown, Ty::Unknown) => vec![],
            };
            for (a, b) in pairs {
                if let Some(c) = candidates.iter().find(|c| c.args == [a, b]) {
                    return Some(c.clone());
                }
            }
        } else if let [Ty::Known(r)] = inputs.as_slice() {
            if let Some(c) = candidates.iter().find(|c| c.args == [*r]) {
                return Some(c.clone());
            }
        }
        self.select_candidate(&inputs, candidates)
    }

    /// Resolves a call of the function `name` (unqualified, or qualified
    /// with `pg_catalog`) among those of `pg_catalog` and of the schemas of
    /// `path`. An aggregate of that name, or an overload resolution does not
    /// model, makes the call unresolved.
    pub fn function(&self, name: &str, inputs: &[Ty], path: &[String]) -> Option<Resolved> {
        let overloads: Vec<&Function> = self
            .functions
            .get(name)?
            .iter()
            .filter(|f| visible(&f.schema, path))
            .collect();
        if overloads.iter().any(|f| f.irregular || f.aggregate) {
            return None;
        }
        let candidates: Vec<Resolved> = overloads
            .iter()
            .filter(|f| f.args.len() == inputs.len())
            .map(|f| Resolved {
                args: f.args.clone(),
                result: f.result,
                leakproof: f.leakproof,
            })
            .collect();
        if inputs.iter().all(|t| matches!(t, Ty::Known(_))) {
            let exact: Vec<Oid> = inputs.iter().map(|t| t.oid()).collect();
            if let Some(c) = candidates.iter().find(|c| c.args == exact) {
                return Some(c.clone());
            }
        }
        self.select_candidate(inputs, candidates)
    }

    /// Step 3 of operator and function resolution; `None` when PostgreSQL
    /// would find no candidate or an ambiguous one, or when a generic
    /// result type would have to be worked out.
    fn select_candidate(&self, inputs: &[Ty], candidates: Vec<Resolved>) -> Option<Resolved> {
        let raw: Vec<Oid> = inputs.iter().map(|t| t.oid()).collect();
        // a. Those every input can be coerced to implicitly.
        let mut cands: Vec<Resolved> = candidates
            .into_iter()
            .filter(|c| {
                c.args
                    .iter()
                    .zip(&raw)
                    .all(|(d, i)| self.coerces_implicitly(*i, *d))
            })
            .collect();
        if cands.len() <= 1 {
            return cands.pop().and_then(|c| self.concrete(c));
        }
        // b. Domains count as their base types from here on.
        let input: Vec<Oid> = raw
            .iter()
            .map(|t| {
                if *t == UNKNOWN {
                    UNKNOWN
                } else {
                    self.base(*t)
                }
            })
            .collect();
        // c. Most exact matches.
        keep_best(&mut cands, |c| {
            c.args
                .iter()
                .zip(&input)
                .filter(|(d, i)| **i != UNKNOWN && *d == *i)
                .count()
        });
        if cands.len() == 1 {
            return cands.pop().and_then(|c| self.concrete(c));
        }
        // d. Most positions taking an exact or preferred type.
        keep_best(&mut cands, |c| {
            c.args
                .iter()
                .zip(&input)
                .filter(|(d, i)| {
                    **i != UNKNOWN
                        && (*d == *i
                            || (self.preferred(**d) && self.category(**d) == self.category(**i)))
                })
                .count()
        });
        if cands.len() == 1 {
            return cands.pop().and_then(|c| self.concrete(c));
        }
        // e. Unknown inputs: a category per position (string if any
        // candidate takes one there), preferred types within it.
        if input.contains(&UNKNOWN) {
            let mut survivors = cands.clone();
            for (pos, _) in input.iter().enumerate().filter(|(_, t)| **t == UNKNOWN) {
                let cats: Vec<u8> = cands.iter().map(|c| self.category(c.args[pos])).collect();
                let category = if cats.contains(&b'S') {
                    b'S'
                } else if cats.windows(2).all(|w| w[0] == w[1]) {
                    cats[0]
                } else {
                    return None;
                };
                let has_preferred = cands
                    .iter()
                    .any(|c| self.category(c.args[pos]) == category && self.preferred(c.args[pos]));
                survivors.retain(|c| {
                    self.category(c.args[pos]) == category
                        && (!has_preferred || self.preferred(c.args[pos]))
                });
            }
            if !survivors.is_empty() {
                cands = survivors;
            }
            if cands.len() == 1 {
                return cands.pop().and_then(|c| self.concrete(c));
            }
            // f. Unknowns taken to be the one type of the known inputs.
            let known: HashSet<Oid> = input.iter().copied().filter(|t| *t != UNKNOWN).collect();
            if known.len() == 1 {
                let k = *known.iter().next()?;
                let fitting: Vec<Resolved> = cands
                    .into_iter()
                    .filter(|c| {
                        c.args
                            .iter()
                            .zip(&input)
                            .all(|(d, i)| *i != UNKNOWN || self.coerces_implicitly(k, *d))
                    })
                    .collect();
                if fitting.len() == 1 {
                    return fitting.into_iter().next().and_then(|c| self.concrete(c));
                }
            }
        }
        None
    }

    /// A candidate with generic argument or result types is not modelled
    /// (what it resolves to depends on rules of their own).
    fn concrete(&self, c: Resolved) -> Option<Resolved> {
        if self.is_polymorphic(c.result) || c.args.iter().any(|a| self.is_polymorphic(*a)) {
            // The function still runs; report it, with its result unknown.
            return Some(Resolved { result: 0, ..c });
        }
        Some(c)
    }

    /// The type PostgreSQL means by a type name as sqlparser prints it
    /// (`INTEGER`, `NUMERIC(10,2)`, `character varying`, `int4[]`), and
    /// whether it carries a type modifier.
    pub fn type_named(&self, printed: &str) -> Option<(Oid, bool)> {
        let lower = printed.trim().to_ascii_lowercase();
        if let Some(elem) = lower.strip_suffix("[]") {
            let (t, m) = self.type_named(elem)?;
            return Some((self.array_of(t)?, m));
        }
        let (head, modifier) = match lower.find('(') {
            Some(i) => {
                // `timestamp(3) with time zone`: the modifier sits inside.
                let close = lower[i..].find(')').map(|j| i + j + 1)?;
                let mut name = lower[..i].trim_end().to_string();
                let rest = lower[close..].trim();
                if !rest.is_empty() {
                    name.push(' ');
                    name.push_str(rest);
                }
                (name, true)
            }
            None => (lower.clone(), false),
        };
        let canonical = match head.as_str() {
            "int" | "integer" | "int4" => "int4",
            "smallint" | "int2" => "int2",
            "bigint" | "int8" => "int8",
            "real" | "float4" => "float4",
            "double precision" | "float8" | "float" | "double" => "float8",
            "decimal" | "numeric" | "dec" => "numeric",
            "character varying" | "varchar" => "varchar",
            "character" | "char" | "bpchar" => "bpchar",
            "boolean" | "bool" => "bool",
            "timestamp" | "timestamp without time zone" => "timestamp",
            "timestamptz" | "timestamp with time zone" => "timestamptz",
            "time" | "time without time zone" => "time",
            "timetz" | "time with time zone" => "timetz",
            other => other,
        };
        // `char` without a length is `char(1)`, `float(p)` picks by
        // precision: both carry a modifier in effect.
        let modifier = modifier || head == "character" || head == "char";
        if head == "float" && modifier {
            return None;
        }
        let unquoted = canonical.trim_matches('"');
        self.names.get(unquoted).map(|t| (*t, modifier))
    }
}

fn keep_best(cands: &mut Vec<Resolved>, score: impl Fn(&Resolved) -> usize) {
    let best = cands.iter().map(&score).max().unwrap_or(0);
    cands.retain(|c| score(c) == best);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small hand-made catalog with PostgreSQL 15's rows for the types,
    /// operators and casts the unit tests use.
    pub(crate) fn sample() -> TypeCatalog {
        let mut c = TypeCatalog::default();
        let mut ty = |oid: Oid, name: &str, cat: u8, pref: bool, array: Oid| {
            c.types.insert(
                oid,
                TypeInfo {
                    name: name.into(),
                    category: cat,
                    preferred: pref,
                    kind: b'b',
                    base: 0,
                    elem: 0,
                    array,
                },
            );
            c.names.insert(name.into(), oid);
        };
        ty(BOOL, "bool", b'B', true, 1000);
        ty(INT2, "int2", b'N', false, 1005);
        ty(INT4, "int4", b'N', false, 1007);
        ty(INT8, "int8", b'N', false, 1016);
        ty(FLOAT4, "float4", b'N', false, 1021);
        ty(FLOAT8, "float8", b'N', true, 1022);
        ty(NUMERIC, "numeric", b'N', false, 1231);
        ty(TEXT, "text", b'S', true, 1009);
        ty(VARCHAR, "varchar", b'S', false, 1015);
        ty(UNKNOWN, "unknown", b'X', false, 0);
        ty(TIMESTAMP, "timestamp", b'D', false, 1115);
        ty(TIMESTAMPTZ, "timestamptz", b'D', true, 1185);
        ty(INTERVAL, "interval", b'T', true, 1187);
        ty(DATE, "date", b'D', false, 1182);
        let ops: &[(&str, Oid, Oid, Oid, bool)] = &[
            ("=", INT4, INT4, BOOL, true),
            ("=", INT8, INT8, BOOL, true),
            ("=", INT8, INT4, BOOL, true),
            ("=", INT4, INT8, BOOL, true),
            ("=", NUMERIC, NUMERIC, BOOL, false),
            ("=", FLOAT8, FLOAT8, BOOL, true),
            ("=", FLOAT4, FLOAT4, BOOL, true),
            ("=", TEXT, TEXT, BOOL, true),
            ("=", TIMESTAMPTZ, TIMESTAMPTZ, BOOL, true),
            ("=", TIMESTAMP, TIMESTAMPTZ, BOOL, false),
            ("=", TIMESTAMP, TIMESTAMP, BOOL, true),
            ("+", INT4, INT4, INT4, false),
            ("-", TIMESTAMPTZ, INTERVAL, TIMESTAMPTZ, false),
            ("~~", TEXT, TEXT, BOOL, false),
        ];
        for (name, l, r, res, lp) in ops {
            c.operators
                .entry((*name).into())
                .or_default()
                .push(Operator {
                    schema: "pg_catalog".into(),
                    left: *l,
                    right: *r,
                    result: *res,
                    leakproof: *lp,
                });
        }
        let casts: &[(Oid, Oid, u8, u8, bool)] = &[
            (INT4, INT8, b'i', b'f', true),
            (INT4, NUMERIC, b'i', b'f', true),
            (INT4, FLOAT8, b'i', b'f', true),
            (INT4, FLOAT4, b'i', b'f', true),
            (INT8, NUMERIC, b'i', b'f', true),
            (INT8, FLOAT8, b'i', b'f', true),
            (NUMERIC, FLOAT8, b'i', b'f', false),
            (NUMERIC, FLOAT4, b'i', b'f', false),
            (FLOAT4, FLOAT8, b'i', b'f', true),
            (VARCHAR, TEXT, b'i', b'b', true),
            (TEXT, VARCHAR, b'i', b'b', true),
            (TIMESTAMP, TIMESTAMPTZ, b'i', b'f', false),
            (DATE, TIMESTAMPTZ, b'i', b'f', false),
        ];
        for (s, t, ctx, m, lp) in casts {
            c.casts.insert(
                (*s, *t),
                Cast {
                    context: *ctx,
                    method: *m,
                    leakproof: *lp,
                },
            );
        }
        c
    }

    #[test]
    fn exact_and_unknown_operands() {
        let c = sample();
        let r = c
            .operator("=", Some(Ty::Known(INT4)), Ty::Known(INT4), &[])
            .unwrap();
        assert_eq!((r.args, r.leakproof), (vec![INT4, INT4], true));
        let r = c
            .operator("=", Some(Ty::Known(TIMESTAMPTZ)), Ty::Unknown, &[])
            .unwrap();
        assert_eq!(r.args, vec![TIMESTAMPTZ, TIMESTAMPTZ]);
        let r = c
            .operator("=", Some(Ty::Known(INT8)), Ty::Known(INT4), &[])
            .unwrap();
        assert_eq!(r.args, vec![INT8, INT4]);
    }

    #[test]
    fn numeric_against_double_picks_double_with_the_column_cast() {
        let c = sample();
        // numeric = float8: only float8 = float8 takes both implicitly.
        let r = c
            .operator("=", Some(Ty::Known(NUMERIC)), Ty::Known(FLOAT8), &[])
            .unwrap();
        assert_eq!(r.args, vec![FLOAT8, FLOAT8]);
        assert!(!c.coercion_is_leakproof(NUMERIC, FLOAT8));
        // numeric = int4: numeric = numeric has the most exact matches.
        let r = c
            .operator("=", Some(Ty::Known(NUMERIC)), Ty::Known(INT4), &[])
            .unwrap();
        assert_eq!(r.args, vec![NUMERIC, NUMERIC]);
    }

    #[test]
    fn varchar_against_unknown_prefers_text() {
        let c = sample();
        let r = c
            .operator("=", Some(Ty::Known(VARCHAR)), Ty::Unknown, &[])
            .unwrap();
        assert_eq!(r.args, vec![TEXT, TEXT]);
        assert!(c.coercion_is_leakproof(VARCHAR, TEXT));
    }

    #[test]
    fn operators_of_schemas_on_the_path_take_part() {
        let mut c = sample();
        // An extension's type, implicitly binary-coercible to text, with an
        // `=` of its own that is not leakproof.
        const CI: Oid = 90_001;
        c.types.insert(
            CI,
            TypeInfo {
                name: "citext".into(),
                category: b'S',
                preferred: false,
                kind: b'b',
                base: 0,
                elem: 0,
                array: 0,
            },
        );
        c.casts.insert(
            (CI, TEXT),
            Cast {
                context: b'i',
                method: b'b',
                leakproof: true,
            },
        );
        c.operators.entry("=".into()).or_default().push(Operator {
            schema: "ext".into(),
            left: CI,
            right: CI,
            result: BOOL,
            leakproof: false,
        });
        let on_path = c
            .operator("=", Some(Ty::Known(CI)), Ty::Unknown, &["ext".into()])
            .unwrap();
        assert_eq!((on_path.args, on_path.leakproof), (vec![CI, CI], false));
        let off_path = c
            .operator("=", Some(Ty::Known(CI)), Ty::Unknown, &["public".into()])
            .unwrap();
        assert_eq!(
            (off_path.args, off_path.leakproof),
            (vec![TEXT, TEXT], true)
        );
    }

    #[test]
    fn type_names_as_sqlparser_prints_them() {
        let c = sample();
        assert_eq!(c.type_named("INTEGER"), Some((INT4, false)));
        assert_eq!(c.type_named("NUMERIC(10,2)"), Some((NUMERIC, true)));
        assert_eq!(c.type_named("DOUBLE PRECISION"), Some((FLOAT8, false)));
        assert_eq!(
            c.type_named("TIMESTAMP WITH TIME ZONE"),
            Some((TIMESTAMPTZ, false))
        );
        assert_eq!(c.type_named("INT[]"), Some((1007, false)));
        assert_eq!(c.type_named("no_such_type"), None);
    }
}
