//! A signed token's claims as an identity (issue "Embedded analytics"):
//! `sub`, `integration`, `suborganization`, `groups`, `attributes` and
//! `access`, validated against the policy, and the access they resolve to.
//!
//! Precedence: the token's own attribute values > the union over its groups
//! (the suborganization and `groups`) > the integration's values; `All`
//! anywhere at a level means `All` at that level. Grants are the union of
//! the integration's and the groups'. The access level is the highest the
//! integration and the groups give, capped by the integration's and by the
//! token's `access` claim.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::resolve::{build, Level, Subject};
use super::{Access, AccessLevel, Origin, PolicySet, Role, Values, USERNAME};

/// Who a verified token says the user is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenIdentity {
    /// The issuer's name in `proxy.yaml`.
    pub issuer: String,
    /// `jti`, or a hash of the token (never the token).
    pub token_id: String,
    pub sub: String,
    pub integration: String,
    pub suborganization: Option<String>,
    pub groups: Vec<String>,
    pub attributes: BTreeMap<String, Values>,
    pub access: Option<AccessLevel>,
}

impl PolicySet {
    /// Reads a verified token's claims as an identity, checking every
    /// attribute value against its declared type. The error says which
    /// claim is wrong and why.
    pub fn token_identity(
        &self,
        issuer: &str,
        token_id: &str,
        claims: &serde_json::Map<String, Value>,
    ) -> Result<TokenIdentity, String> {
        let text = |name: &str| -> Result<Option<String>, String> {
            match claims.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("claim `{name}` is not a string")),
            }
        };
        let sub = text("sub")?.ok_or("token has no `sub` claim")?;
        let integration = text("integration")?.ok_or("token has no `integration` claim")?;
        let suborganization = text("suborganization")?;
        let groups = match claims.get("groups") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Value::String(s) if !out.contains(s) => out.push(s.clone()),
                        Value::String(_) => {}
                        _ => return Err("claim `groups` is not a list of names".into()),
                    }
                }
                out
            }
            Some(_) => return Err("claim `groups` is not a list of names".into()),
        };
        let access = match text("access")? {
            None => None,
            Some(a) => Some(AccessLevel::parse(&a).ok_or_else(|| {
                format!(
                    "claim `access`: `{}` is not read-only or read-write",
                    crate::tokens::printable(&a)
                )
            })?),
        };
        let mut attributes = BTreeMap::new();
        match claims.get("attributes") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (name, value) in map {
                    let shown = crate::tokens::printable(name);
                    if name == USERNAME {
                        return Err(
                            "attribute `username` is built in (the token's `sub`) and cannot be given"
                                .into(),
                        );
                    }
                    let Some(ty) = self.attributes.get(name) else {
                        return Err(format!("undeclared attribute `{shown}`"));
                    };
                    let items: Vec<&Value> = match value {
                        Value::String(s) if s == "All" => {
                            attributes.insert(name.clone(), Values::All);
                            continue;
                        }
                        Value::Array(list) => list.iter().collect(),
                        one => vec![one],
                    };
                    let mut typed = Vec::new();
                    for item in items {
                        let written = match item {
                            Value::String(s) if s == "All" => {
                                return Err(format!(
                                    "attribute `{shown}`: `All` already means every value; list nothing else"
                                ))
                            }
                            Value::String(s) => s.clone(),
                            Value::Number(n) => n.to_string(),
                            Value::Bool(b) => b.to_string(),
                            _ => {
                                return Err(format!(
                                    "attribute `{shown}`: a value must be a string, number or boolean"
                                ))
                            }
                        };
                        let v = ty.check(&written).map_err(|e| {
                            format!("attribute `{shown}`: {}", crate::tokens::printable(&e))
                        })?;
                        if !typed.contains(&v) {
                            typed.push(v);
                        }
                    }
                    attributes.insert(name.clone(), Values::List(typed));
                }
            }
            Some(_) => return Err("claim `attributes` is not a mapping".into()),
        }
        Ok(TokenIdentity {
            issuer: issuer.to_string(),
            token_id: token_id.to_string(),
            sub,
            integration,
            suborganization,
            groups,
            attributes,
            access,
        })
    }

    /// The access a token identity resolves to; an error when its
    /// integration or one of its `groups` is not declared.
    pub fn token_access(&self, identity: &TokenIdentity) -> Result<Access, String> {
        let shown = crate::tokens::printable;
        let integration = self
            .integrations
            .get(&identity.integration)
            .ok_or_else(|| format!("unknown integration `{}`", shown(&identity.integration)))?;
        for g in &identity.groups {
            if !self.groups.contains_key(g) {
                return Err(format!("undeclared group `{}`", shown(g)));
            }
        }
        // The suborganization first (an undeclared one is an empty group),
        // then the groups.
        let mut names: Vec<String> = Vec::new();
        names.extend(identity.suborganization.iter().cloned());
        for g in &identity.groups {
            if !names.contains(g) {
                names.push(g.clone());
            }
        }
        let group_levels: Vec<Level> = names
            .iter()
            .map(|g| {
                let group = self.groups.get(g);
                Level {
                    origin: Origin::Group(g.clone()),
                    tables: group.map_or(&[][..], |g| &g.tables),
                    read_only: group.map_or(&[][..], |g| &g.read_only),
                    attributes: group.map(|g| &g.attributes),
                    data_sources: group.map_or(&[][..], |g| &g.data_sources),
                    default_data_source: group.and_then(|g| g.default_data_source.as_ref()),
                }
            })
            .collect();

        // The highest the integration and the groups give ...
        let from_integration = Origin::Integration(identity.integration.clone());
        let mut level = (integration.access, vec![from_integration.clone()]);
        for g in &names {
            if let Some(l) = self.groups.get(g).and_then(|g| g.access) {
                if l > level.0 {
                    level = (l, vec![Origin::Group(g.clone())]);
                } else if l == level.0 {
                    level.1.push(Origin::Group(g.clone()));
                }
            }
        }
        // ... capped by the integration's and the token's.
        if level.0 > integration.access {
            level = (integration.access, vec![from_integration]);
        }
        if let Some(claim) = identity.access {
            if level.0 > claim {
                level = (claim, vec![Origin::Token]);
            }
        }

        Ok(build(
            self,
            Subject {
                name: &identity.sub,
                role: Role::Member,
                groups: names.clone(),
                own: Some(Level {
                    origin: Origin::Token,
                    tables: &[],
                    read_only: &[],
                    attributes: Some(&identity.attributes),
                    data_sources: &[],
                    default_data_source: None,
                }),
                group_levels,
                base: Some(Level {
                    origin: Origin::Integration(identity.integration.clone()),
                    tables: &integration.tables,
                    read_only: &integration.read_only,
                    attributes: Some(&integration.attributes),
                    data_sources: &integration.data_sources,
                    default_data_source: integration.default_data_source.as_ref(),
                }),
                level,
                token: Some(Arc::new(identity.clone())),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{load_sources, AttrValue, Resolved, Source};

    const POLICY: &str = "
attributes:
  country: { type: text }
  tier: { type: integer }
integrations:
  embed:
    tables: [public.a]
    attributes: { country: [Vietnam], tier: [1] }
    access: read-write
  viewer:
    tables: [public.a]
groups:
  rw: { access: read-write, tables: [public.b] }
  sg: { attributes: { country: [Singapore] } }
  th: { attributes: { country: [Thailand] } }
  every: { attributes: { country: All } }
";

    fn policy() -> PolicySet {
        let sources = [Source {
            path: "p.yaml".into(),
            text: POLICY.into(),
        }];
        load_sources(&sources).unwrap().policy().clone()
    }

    fn access(p: &PolicySet, claims: serde_json::Value) -> Result<Access, String> {
        let mut c = serde_json::json!({"sub": "u", "integration": "embed"});
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        let id = p.token_identity("iss", "jti:1", c.as_object().unwrap())?;
        p.token_access(&id)
    }

    fn values(a: &Access, attr: &str) -> Vec<(String, Vec<String>)> {
        match &a.attributes[attr] {
            Resolved::All(o) => vec![("All".into(), o.iter().map(|o| o.to_string()).collect())],
            Resolved::Values(vs) => vs
                .iter()
                .map(|(v, o)| (v.to_string(), o.iter().map(|o| o.to_string()).collect()))
                .collect(),
        }
    }

    fn pairs(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        list.iter()
            .map(|(v, o)| (v.to_string(), o.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn token_over_groups_over_integration() {
        let p = policy();
        let a = access(&p, serde_json::json!({})).unwrap();
        assert_eq!(
            values(&a, "country"),
            pairs(&[("Vietnam", &["integration embed"])])
        );
        let a = access(&p, serde_json::json!({"groups": ["sg", "th"]})).unwrap();
        assert_eq!(
            values(&a, "country"),
            pairs(&[("Singapore", &["group sg"]), ("Thailand", &["group th"])])
        );
        assert_eq!(values(&a, "tier"), pairs(&[("1", &["integration embed"])]));
        let a = access(
            &p,
            serde_json::json!({"suborganization": "every", "groups": ["sg"]}),
        )
        .unwrap();
        assert_eq!(values(&a, "country"), pairs(&[("All", &["group every"])]));
        let a = access(
            &p,
            serde_json::json!({"groups": ["every"], "attributes": {"country": [], "tier": 7}}),
        )
        .unwrap();
        assert_eq!(values(&a, "country"), pairs(&[]));
        assert_eq!(values(&a, "tier"), pairs(&[("7", &["token"])]));
        assert_eq!(
            a.attributes["username"],
            Resolved::Values(vec![(AttrValue::Text("u".into()), vec![Origin::Login])])
        );
        // An undeclared suborganization is an empty group.
        let a = access(&p, serde_json::json!({"suborganization": "acme"})).unwrap();
        assert_eq!(a.groups, ["acme"]);
        assert_eq!(
            values(&a, "country"),
            pairs(&[("Vietnam", &["integration embed"])])
        );
    }

    #[test]
    fn grants_are_the_union_and_access_is_capped() {
        let p = policy();
        let level = |claims| {
            let a = access(&p, claims).unwrap();
            let from: Vec<String> = a.level.1.iter().map(|o| o.to_string()).collect();
            (a.level.0.name(), from.join(", "), a.grants.len())
        };
        use serde_json::json;
        assert_eq!(
            level(json!({})),
            ("read-write", "integration embed".into(), 1)
        );
        assert_eq!(
            level(json!({"access": "read-only", "groups": ["rw"]})),
            ("read-only", "token".into(), 2)
        );
        assert_eq!(
            level(json!({"integration": "viewer", "groups": ["rw"]})),
            ("read-only", "integration viewer".into(), 2)
        );
    }

    #[test]
    fn claims_that_do_not_fit_say_why() {
        let p = policy();
        let why = |claims| access(&p, claims).unwrap_err();
        use serde_json::json;
        assert_eq!(
            why(json!({"integration": "nope"})),
            "unknown integration `nope`"
        );
        assert_eq!(why(json!({"groups": ["sg", "x"]})), "undeclared group `x`");
        assert_eq!(
            why(json!({"groups": "sg"})),
            "claim `groups` is not a list of names"
        );
        assert_eq!(
            why(json!({"attributes": {"tier": ["1.5"]}})),
            "attribute `tier`: `1.5` is not a valid integer value"
        );
        assert_eq!(
            why(json!({"attributes": {"tier": [{"a": 1}]}})),
            "attribute `tier`: a value must be a string, number or boolean"
        );
        assert_eq!(
            why(json!({"attributes": {"country": ["All", "x"]}})),
            "attribute `country`: `All` already means every value; list nothing else"
        );
        assert_eq!(
            why(json!({"attributes": ["x"]})),
            "claim `attributes` is not a mapping"
        );
        assert_eq!(
            why(json!({"integration": 3})),
            "claim `integration` is not a string"
        );
    }

    /// The data sources of a token user: the union of the integration's
    /// and the groups' lists; the most specific default; and the source a
    /// client's database chooses.
    #[test]
    fn data_sources_from_the_integration_and_groups() {
        const SOURCES: &str = "
integrations:
  embed:
    tables: [public.a, \"testing:public.t\"]
    data_sources: [production]
    default_data_source: production
groups:
  testers: { data_sources: [testing], default_data_source: testing }
  plain: {}
";
        let files = [Source {
            path: "p.yaml".into(),
            text: SOURCES.into(),
        }];
        let names = [
            "production".to_string(),
            "testing".to_string(),
            "other".to_string(),
        ];
        let loaded = crate::policy::load_sources_for(&files, &names).unwrap();
        let policies = &loaded.policies;
        let token = |groups: serde_json::Value| {
            let c = serde_json::json!({"sub": "u", "integration": "embed", "groups": groups});
            let p = policies.main();
            let id = p
                .token_identity("iss", "jti:1", c.as_object().unwrap())
                .unwrap();
            p.token_access(&id).unwrap()
        };
        let plain = token(serde_json::json!(["plain"]));
        assert_eq!(policies.choose(&plain, "u").unwrap(), "production");
        assert_eq!(
            policies.choose(&plain, "testing").unwrap_err(),
            crate::policy::SourceRefusal::NotAllowed("testing".into())
        );
        let tester = token(serde_json::json!(["testers"]));
        // The group's default beats the integration's.
        assert_eq!(policies.choose(&tester, "u").unwrap(), "testing");
        assert_eq!(
            policies.choose(&tester, "production").unwrap(),
            "production"
        );
        assert!(policies.choose(&tester, "other").is_err());
        // Grants written for one source exist on that source only.
        let on = |source: &str| {
            let p = policies.get(source).unwrap();
            let id = crate::policy::TokenIdentity {
                ..tester.token.as_deref().unwrap().clone()
            };
            let a = p.token_access(&id).unwrap();
            a.grants
                .iter()
                .map(|(g, _)| g.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(on("testing"), ["public.a", "public.t"]);
        assert_eq!(on("production"), ["public.a"]);
    }
}
