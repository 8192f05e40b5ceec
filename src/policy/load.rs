//! Loading policy files: read every `*.yaml`/`*.yml` of a directory (or one
//! file), merge them, and validate everything, collecting every problem with
//! its `file:line:column` instead of stopping at the first.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use super::raw;
use super::{
    AccessLevel, AttrType, Filter, Grant, Group, Integration, Password, Policies, PolicySet, Role,
    TablePolicy, User, Values, DEFAULT_DATA_SOURCE,
};
use crate::diag::{self, Diagnostic, Pos};
use crate::names::{self, Part, RelName};

/// One policy file's name and text.
#[derive(Clone, Debug)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// A policy set that loaded, with the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    /// The rules of every data source.
    pub policies: Policies,
    pub warnings: Vec<Diagnostic>,
    pub files: Vec<PathBuf>,
}

impl Loaded {
    /// The rules of the data source named `default`, or of the first one
    /// (what a single-source deployment enforces).
    pub fn policy(&self) -> &PolicySet {
        self.policies.main()
    }
}

/// Loads a policy directory (every `*.yaml`/`*.yml` in it, in name order) or
/// a single file. On failure returns every problem found, sorted by position.
pub fn load_path(path: &Path) -> Result<Loaded, Vec<Diagnostic>> {
    load_path_for(path, &[DEFAULT_DATA_SOURCE.to_string()])
}

/// [`load_path`] for a proxy whose data sources are `data_sources` (the
/// names of `proxy.yaml`'s `upstream:`/`upstreams:`).
pub fn load_path_for(path: &Path, data_sources: &[String]) -> Result<Loaded, Vec<Diagnostic>> {
    let io_error = |p: &Path, e: std::io::Error| {
        vec![Diagnostic::error(
            p,
            Pos::START,
            format!("cannot read: {e}"),
        )]
    };
    let mut paths = Vec::new();
    if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| io_error(path, e))?;
        for entry in entries {
            let p = entry.map_err(|e| io_error(path, e))?.path();
            let yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
            if yaml && p.is_file() {
                paths.push(p);
            }
        }
        paths.sort();
        if paths.is_empty() {
            return Err(vec![Diagnostic::error(
                path,
                Pos::START,
                "the policy directory holds no *.yaml or *.yml file",
            )]);
        }
    } else {
        paths.push(path.to_path_buf());
    }
    let mut sources = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(&p).map_err(|e| io_error(&p, e))?;
        sources.push(Source { path: p, text });
    }
    load_sources_for(&sources, data_sources)
}

/// Parses, merges and validates policy sources, for the one data source
/// `default`.
pub fn load_sources(sources: &[Source]) -> Result<Loaded, Vec<Diagnostic>> {
    load_sources_for(sources, &[DEFAULT_DATA_SOURCE.to_string()])
}

/// Parses, merges and validates policy sources for a proxy whose data
/// sources are `data_sources`.
pub fn load_sources_for(
    sources: &[Source],
    data_sources: &[String],
) -> Result<Loaded, Vec<Diagnostic>> {
    let mut v = Validator {
        data_sources: data_sources.to_vec(),
        ..Validator::default()
    };
    let mut files = Vec::new();
    for source in sources {
        if let Some(file) = v.parse(source) {
            files.push((source.path.clone(), file));
        }
    }
    v.merge(files);
    v.finish(sources.iter().map(|s| s.path.clone()).collect())
}

/// Whether `text` has the shape of a PostgreSQL SCRAM-SHA-256 verifier:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
fn is_scram_verifier(text: &str) -> bool {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).ok();
    let Some(rest) = text.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((params, keys)) = rest.split_once('$') else {
        return false;
    };
    let Some((iterations, salt)) = params.split_once(':') else {
        return false;
    };
    let Some((stored, server)) = keys.split_once(':') else {
        return false;
    };
    iterations.parse::<u32>().is_ok_and(|i| i > 0)
        && b64(salt).is_some_and(|s| !s.is_empty())
        && b64(stored).is_some_and(|k| k.len() == 32)
        && b64(server).is_some_and(|k| k.len() == 32)
}

/// An entry of a merged section: where it was defined, and its raw content.
struct Entry<T> {
    file: PathBuf,
    pos: Pos,
    value: T,
}

#[derive(Default)]
struct Validator {
    diagnostics: Vec<Diagnostic>,
    attributes: BTreeMap<String, Entry<raw::Attribute>>,
    groups: BTreeMap<String, Entry<raw::Group>>,
    integrations: BTreeMap<String, Entry<raw::Integration>>,
    users: BTreeMap<String, Entry<raw::User>>,
    /// By the data source they are for (`None`: every source) and name.
    tables: BTreeMap<(Option<String>, RelName), Entry<raw::Table>>,
    functions: Vec<(PathBuf, Spanned<String>)>,
    references: Vec<Reference>,
    /// The declared data sources.
    data_sources: Vec<String>,
}

/// A grant, for one data source or (`None`) every one.
type Scoped<T> = (Option<String>, T);

/// `production:public.orders`: the data source a policy name is for, and
/// the rest; `None` when it names none.
fn split_source(name: &Spanned<String>) -> (Option<String>, Spanned<String>) {
    match name.value.split_once(':') {
        Some((source, rest)) if !source.is_empty() && !source.contains(['"', '.', ' ']) => (
            Some(source.to_string()),
            Spanned::new(rest.to_string(), name.referenced, name.defined),
        ),
        _ => (None, name.clone()),
    }
}

/// A `references` filter, kept with its position for the checks that need
/// every table first.
struct Reference {
    file: PathBuf,
    pos: Pos,
    /// The data source of the rule it is in (`None`: every source).
    source: Option<String>,
    from: RelName,
    to: RelName,
}

fn pos<T>(s: &Spanned<T>) -> Pos {
    s.referenced.into()
}

impl Validator {
    fn error(&mut self, file: &Path, pos: Pos, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::error(file, pos, message));
    }

    /// Reads one file, reporting every problem of its reading. Unknown keys
    /// and keys written twice are left out and the rest is validated; a file
    /// with a value of the wrong shape (or that could not be read at all)
    /// is not validated further, as its definitions are incomplete.
    fn parse(&mut self, source: &Source) -> Option<raw::File> {
        let read = diag::read::<raw::File>(&source.path, &source.text);
        self.diagnostics.extend(read.problems);
        read.value.filter(|_| read.complete).map(|file| file.value)
    }

    fn merge(&mut self, files: Vec<(PathBuf, raw::File)>) {
        for (path, file) in files {
            for (key, value) in file.attributes.unwrap_or_default() {
                self.insert_named("attribute", &path, key, value.value, |v| &mut v.attributes);
            }
            for (key, value) in file.groups.unwrap_or_default() {
                self.insert_named("group", &path, key, value.value, |v| &mut v.groups);
            }
            for (key, value) in file.integrations.unwrap_or_default() {
                self.insert_named("integration", &path, key, value.value, |v| {
                    &mut v.integrations
                });
            }
            for (key, value) in file.users.unwrap_or_default() {
                self.insert_named("user", &path, key, value.value, |v| &mut v.users);
            }
            for (key, value) in file.tables.unwrap_or_default() {
                let at = pos(&key);
                let (source, name) = split_source(&key);
                if !self.declared_source(&path, &key, source.as_deref()) {
                    continue;
                }
                let Some(rel) = self.relation(&path, &name) else {
                    continue;
                };
                let rel = (source, rel);
                if let Some(first) = self.tables.get(&rel) {
                    let shown = match &rel.0 {
                        Some(s) => format!("{s}:{}", rel.1),
                        None => rel.1.to_string(),
                    };
                    let msg = format!(
                        "table {shown} is already defined at {}:{}:{}",
                        first.file.display(),
                        first.pos.line,
                        first.pos.column
                    );
                    self.error(&path, at, msg);
                    continue;
                }
                let entry = Entry {
                    file: path.clone(),
                    pos: at,
                    value: value.value,
                };
                self.tables.insert(rel, entry);
            }
            for f in file.functions.unwrap_or_default() {
                self.functions.push((path.clone(), f));
            }
        }
    }

    fn insert_named<T>(
        &mut self,
        kind: &str,
        path: &Path,
        key: Spanned<String>,
        value: T,
        section: impl Fn(&mut Self) -> &mut BTreeMap<String, Entry<T>>,
    ) {
        let at = pos(&key);
        if key.value.is_empty() {
            self.error(path, at, format!("a {kind} name cannot be empty"));
            return;
        }
        if let Some(first) = section(self).get(&key.value) {
            let msg = format!(
                "{kind} `{}` is already defined at {}:{}:{}",
                key.value,
                first.file.display(),
                first.pos.line,
                first.pos.column
            );
            self.error(path, at, msg);
            return;
        }
        let entry = Entry {
            file: path.to_path_buf(),
            pos: at,
            value,
        };
        section(self).insert(key.value, entry);
    }

    /// A `schema.table` name from a policy file; reports and returns `None`
    /// when malformed.
    fn relation(&mut self, file: &Path, name: &Spanned<String>) -> Option<RelName> {
        match names::parse_dotted(&name.value) {
            Ok(parts) => match parts.as_slice() {
                [Part::Name(schema), Part::Name(table)] => Some(RelName::new(schema, table)),
                [Part::Name(_)] => {
                    let msg = format!(
                        "table name `{}` must be schema-qualified, e.g. `public.{}`",
                        name.value, name.value
                    );
                    self.error(file, pos(name), msg);
                    None
                }
                _ => {
                    let msg = format!(
                        "`{}` is not a table name of the form schema.table",
                        name.value
                    );
                    self.error(file, pos(name), msg);
                    None
                }
            },
            Err(e) => {
                let msg = format!("malformed table name `{}`: {e}", name.value);
                self.error(file, pos(name), msg);
                None
            }
        }
    }

    /// Whether `source` (a prefix written before a table name) is a
    /// declared data source; reports it when not.
    fn declared_source(&mut self, file: &Path, at: &Spanned<String>, source: Option<&str>) -> bool {
        match source {
            Some(s) if !self.data_sources.iter().any(|d| d == s) => {
                let msg = format!(
                    "`{}`: undeclared data source `{s}` (proxy.yaml declares {})",
                    at.value,
                    self.data_sources.join(", ")
                );
                self.error(file, pos(at), msg);
                false
            }
            _ => true,
        }
    }

    /// A grant (`schema.table` or `schema.*`), optionally for one data
    /// source (`testing:public.orders`).
    fn grant(&mut self, file: &Path, written: &Spanned<String>) -> Option<Scoped<Grant>> {
        let (source, name) = split_source(written);
        if !self.declared_source(file, written, source.as_deref()) {
            return None;
        }
        self.unscoped_grant(file, &name).map(|g| (source, g))
    }

    fn unscoped_grant(&mut self, file: &Path, name: &Spanned<String>) -> Option<Grant> {
        match names::parse_dotted(&name.value) {
            Ok(parts) => match parts.as_slice() {
                [Part::Name(s), Part::Star] => Some(Grant::Schema(s.clone())),
                [Part::Name(_), Part::Name(_)] => self.relation(file, name).map(Grant::Table),
                [Part::Name(_)] => self.relation(file, name).map(Grant::Table),
                _ => {
                    let msg = format!(
                        "malformed table pattern `{}`: write schema.table or schema.*",
                        name.value
                    );
                    self.error(file, pos(name), msg);
                    None
                }
            },
            Err(e) => {
                let msg = format!("malformed table pattern `{}`: {e}", name.value);
                self.error(file, pos(name), msg);
                None
            }
        }
    }

    fn grants(&mut self, file: &Path, list: &Option<Vec<Spanned<String>>>) -> Vec<Scoped<Grant>> {
        let mut grants = Vec::new();
        for name in list.iter().flatten() {
            if let Some(g) = self.grant(file, name) {
                if !grants.contains(&g) {
                    grants.push(g);
                }
            }
        }
        grants
    }

    /// An `access:` value.
    fn access_level(
        &mut self,
        file: &Path,
        value: &Option<Spanned<String>>,
    ) -> Option<AccessLevel> {
        let v = value.as_ref()?;
        let level = AccessLevel::parse(&v.value);
        if level.is_none() {
            let msg = format!("access: `{}` is not read-only or read-write", v.value);
            self.error(file, pos(v), msg);
        }
        level
    }

    /// `data_sources:` and `default_data_source:`: every name must be a
    /// declared data source.
    fn data_sources(
        &mut self,
        file: &Path,
        list: &Option<Vec<Spanned<String>>>,
        default: &Option<Spanned<String>>,
    ) -> (Vec<String>, Option<String>) {
        let mut names = Vec::new();
        for name in list.iter().flatten().chain(default) {
            if !self.data_sources.contains(&name.value) {
                let msg = format!(
                    "undeclared data source `{}` (proxy.yaml declares {})",
                    name.value,
                    self.data_sources.join(", ")
                );
                self.error(file, pos(name), msg);
            }
        }
        for name in list.iter().flatten() {
            if !names.contains(&name.value) {
                names.push(name.value.clone());
            }
        }
        (names, default.as_ref().map(|d| d.value.clone()))
    }

    fn attribute_values(
        &mut self,
        file: &Path,
        types: &BTreeMap<String, AttrType>,
        attrs: &Option<raw::Map<raw::Values>>,
    ) -> BTreeMap<String, Values> {
        let mut out = BTreeMap::new();
        for (key, values) in attrs.iter().flatten() {
            let name = &key.value;
            if name == super::USERNAME {
                let msg = "`username` is built in (the login name) and cannot be assigned";
                self.error(file, pos(key), msg);
                continue;
            }
            let Some(&ty) = types.get(name) else {
                self.error(file, pos(key), format!("undefined attribute `{name}`"));
                continue;
            };
            let items: Vec<(Pos, &str)> = match &values.value {
                raw::Values::One(s) => vec![(pos(values), s.as_str())],
                raw::Values::List(list) => {
                    list.iter().map(|s| (pos(s), s.value.as_str())).collect()
                }
            };
            if items.iter().any(|(_, s)| *s == "All") {
                if items.len() > 1 {
                    let msg =
                        format!("`{name}`: `All` already means every value; list nothing else");
                    self.error(file, pos(values), msg);
                }
                out.insert(name.clone(), Values::All);
                continue;
            }
            let mut typed = Vec::new();
            for (at, written) in items {
                match ty.check(written) {
                    Ok(v) if !typed.contains(&v) => typed.push(v),
                    Ok(_) => {}
                    Err(e) => self.error(file, at, format!("attribute `{name}`: {e}")),
                }
            }
            out.insert(name.clone(), Values::List(typed));
        }
        out
    }

    fn finish(mut self, files: Vec<PathBuf>) -> Result<Loaded, Vec<Diagnostic>> {
        let mut policy = PolicySet::default();
        let mut warnings = Vec::new();

        for (name, entry) in std::mem::take(&mut self.attributes) {
            if name == super::USERNAME {
                let msg = "`username` is built in (the login name) and cannot be declared";
                self.error(&entry.file, entry.pos, msg);
                continue;
            }
            let Some(ty) = &entry.value.ty else {
                let msg = format!(
                    "attribute `{name}` needs a `type` (one of {})",
                    AttrType::NAMES
                );
                self.error(&entry.file, entry.pos, msg);
                continue;
            };
            match AttrType::parse(&ty.value) {
                Some(ty) => {
                    policy.attributes.insert(name, ty);
                }
                None => {
                    let msg = format!(
                        "attribute `{name}`: unknown type `{}` (expected one of {})",
                        ty.value,
                        AttrType::NAMES
                    );
                    self.error(&entry.file, pos(ty), msg);
                }
            }
        }
        let types = policy.attributes.clone();

        let mut rules: BTreeMap<(Option<String>, RelName), TablePolicy> = BTreeMap::new();
        for ((source, name), entry) in std::mem::take(&mut self.tables) {
            let mut filters = Vec::new();
            let before = self.references.len();
            for f in entry.value.filters.iter().flatten() {
                if let Some(filter) = self.filter(&entry.file, &types, &name, f) {
                    filters.push(filter);
                }
            }
            for r in &mut self.references[before..] {
                r.source = source.clone();
            }
            rules.insert((source, name), TablePolicy { filters });
        }
        let mut grants: BTreeMap<(&str, String), Vec<Scoped<Grant>>> = BTreeMap::new();

        for (name, entry) in std::mem::take(&mut self.groups) {
            let tables = self.grants(&entry.file, &entry.value.tables);
            let read_only = self.grants(&entry.file, &entry.value.read_only);
            grants.insert(("group-ro", name.clone()), read_only);
            let attributes = self.attribute_values(&entry.file, &types, &entry.value.attributes);
            let access = self.access_level(&entry.file, &entry.value.access);
            let g = &entry.value;
            let (data_sources, default_data_source) =
                self.data_sources(&entry.file, &g.data_sources, &g.default_data_source);
            grants.insert(("group", name.clone()), tables);
            policy.groups.insert(
                name,
                Group {
                    tables: Vec::new(),
                    read_only: Vec::new(),
                    attributes,
                    access,
                    data_sources,
                    default_data_source,
                },
            );
        }

        for (name, entry) in std::mem::take(&mut self.integrations) {
            let i = &entry.value;
            let tables = self.grants(&entry.file, &i.tables);
            let read_only = self.grants(&entry.file, &i.read_only);
            grants.insert(("integration-ro", name.clone()), read_only);
            let attributes = self.attribute_values(&entry.file, &types, &i.attributes);
            let access = self
                .access_level(&entry.file, &i.access)
                .unwrap_or_default();
            let (data_sources, default_data_source) =
                self.data_sources(&entry.file, &i.data_sources, &i.default_data_source);
            grants.insert(("integration", name.clone()), tables);
            policy.integrations.insert(
                name,
                Integration {
                    tables: Vec::new(),
                    read_only: Vec::new(),
                    attributes,
                    access,
                    data_sources,
                    default_data_source,
                },
            );
        }

        for (name, entry) in std::mem::take(&mut self.users) {
            let file = entry.file.clone();
            let u = entry.value;
            let role = match &u.role {
                None => Role::Member,
                Some(r) => Role::parse(&r.value).unwrap_or_else(|| {
                    let msg = format!(
                        "user `{name}`: unknown role `{}` (expected admin, analyst or member)",
                        r.value
                    );
                    self.error(&file, pos(r), msg);
                    Role::Member
                }),
            };
            let password = match &u.password {
                None => {
                    let msg = format!("user `{name}` has no password");
                    self.error(&file, entry.pos, msg);
                    Password::Plain(String::new())
                }
                Some(p) if p.value.starts_with("SCRAM-SHA-256$") => {
                    if !is_scram_verifier(&p.value) {
                        let msg = format!(
                            "user `{name}`: malformed SCRAM-SHA-256 verifier (make one with `rowgate passwd`)"
                        );
                        self.error(&file, pos(p), msg);
                    }
                    Password::Scram(p.value.clone())
                }
                Some(p) if p.value.is_empty() => {
                    self.error(
                        &file,
                        pos(p),
                        format!("user `{name}` has an empty password"),
                    );
                    Password::Plain(String::new())
                }
                Some(p) => {
                    let msg = format!(
                        "user `{name}` has a plain-text password; store a verifier from `rowgate passwd` instead"
                    );
                    warnings.push(Diagnostic::warning(&file, pos(p), msg));
                    Password::Plain(p.value.clone())
                }
            };
            let mut groups = Vec::new();
            for g in u.groups.iter().flatten() {
                if !policy.groups.contains_key(&g.value) {
                    let msg = format!("user `{name}`: undefined group `{}`", g.value);
                    self.error(&file, pos(g), msg);
                } else if !groups.contains(&g.value) {
                    groups.push(g.value.clone());
                }
            }
            let tables = self.grants(&file, &u.tables);
            let read_only = self.grants(&file, &u.read_only);
            grants.insert(("user-ro", name.clone()), read_only);
            let attributes = self.attribute_values(&file, &types, &u.attributes);
            let access = self.access_level(&file, &u.access);
            let (data_sources, default_data_source) =
                self.data_sources(&file, &u.data_sources, &u.default_data_source);
            grants.insert(("user", name.clone()), tables);
            let user = User {
                password,
                role,
                groups,
                tables: Vec::new(),
                read_only: Vec::new(),
                attributes,
                access,
                data_sources,
                default_data_source,
            };
            policy.users.insert(name, user);
        }

        for (file, f) in std::mem::take(&mut self.functions) {
            match names::parse_dotted(&f.value) {
                Ok(parts) => match parts.as_slice() {
                    [Part::Name(s), Part::Name(n)] => {
                        policy.functions.insert(RelName::new(s, n));
                    }
                    _ => {
                        let msg = format!("function `{}` must be written schema.name", f.value);
                        self.error(&file, pos(&f), msg);
                    }
                },
                Err(e) => {
                    let msg = format!("malformed function name `{}`: {e}", f.value);
                    self.error(&file, pos(&f), msg);
                }
            }
        }

        // Each data source's rules: the tables and grants written for it,
        // and those for every source that it does not write its own of.
        let references = std::mem::take(&mut self.references);
        let mut by_source = BTreeMap::new();
        for source in self.data_sources.clone() {
            let mine = |scope: &Option<String>| scope.as_deref().is_none_or(|s| s == source);
            let mut p = policy.clone();
            p.data_source = source.clone();
            for ((scope, rel), rule) in &rules {
                let applies = match scope {
                    Some(s) => *s == source,
                    None => !rules.contains_key(&(Some(source.clone()), rel.clone())),
                };
                if applies {
                    p.tables.insert(rel.clone(), rule.clone());
                }
            }
            let project = |key: (&str, &String)| -> Vec<Grant> {
                let mut out: Vec<Grant> = Vec::new();
                for (scope, g) in grants.get(&(key.0, key.1.clone())).into_iter().flatten() {
                    if mine(scope) && !out.contains(g) {
                        out.push(g.clone());
                    }
                }
                out
            };
            for (name, g) in p.groups.iter_mut() {
                g.tables = project(("group", name));
                g.read_only = project(("group-ro", name));
            }
            for (name, i) in p.integrations.iter_mut() {
                i.tables = project(("integration", name));
                i.read_only = project(("integration-ro", name));
            }
            for (name, u) in p.users.iter_mut() {
                u.tables = project(("user", name));
                u.read_only = project(("user-ro", name));
            }
            let active: Vec<&Reference> = references
                .iter()
                .filter(|r| match &r.source {
                    Some(s) => *s == source,
                    None => !rules.contains_key(&(Some(source.clone()), r.from.clone())),
                })
                .collect();
            self.check_references(&p, &active);
            by_source.insert(source, p);
        }

        if self.diagnostics.is_empty() {
            diag::sort(&mut warnings);
            Ok(Loaded {
                policies: Policies::new(by_source),
                warnings,
                files,
            })
        } else {
            let mut all = self.diagnostics;
            all.extend(warnings);
            diag::sort(&mut all);
            // A rule for every source is checked once per source.
            all.dedup_by(|a, b| a.to_string() == b.to_string());
            Err(all)
        }
    }

    /// Every reference must name a table with a policy entry, and references
    /// must not form a cycle.
    fn check_references(&mut self, policy: &PolicySet, references: &[&Reference]) {
        let mut edges: HashMap<&RelName, Vec<&Reference>> = HashMap::new();
        for r in references.iter().copied() {
            if policy.tables.contains_key(&r.to) {
                edges.entry(&r.from).or_default().push(r);
            } else {
                let msg = format!(
                    "references table {} which has no entry under `tables:`; add one (it may have no filters)",
                    r.to
                );
                self.error(&r.file, r.pos, msg);
            }
        }
        // Depth-first search; a back edge closes a cycle, reported once at
        // the reference that closes it.
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Active,
            Done,
        }
        fn visit<'a>(
            node: &'a RelName,
            edges: &HashMap<&'a RelName, Vec<&'a Reference>>,
            marks: &mut HashMap<&'a RelName, Mark>,
            path: &mut Vec<&'a RelName>,
            cycles: &mut Vec<(&'a Reference, String)>,
        ) {
            marks.insert(node, Mark::Active);
            path.push(node);
            for r in edges.get(node).into_iter().flatten() {
                match marks.get(&r.to) {
                    Some(Mark::Active) => {
                        let start = path.iter().position(|n| **n == r.to).unwrap_or(0);
                        let mut names: Vec<String> =
                            path[start..].iter().map(|n| n.to_string()).collect();
                        names.push(r.to.to_string());
                        cycles.push((r, names.join(" -> ")));
                    }
                    Some(Mark::Done) => {}
                    None => visit(&r.to, edges, marks, path, cycles),
                }
            }
            path.pop();
            marks.insert(node, Mark::Done);
        }
        let mut marks = HashMap::new();
        let mut cycles = Vec::new();
        for table in policy.tables.keys() {
            if !marks.contains_key(table) {
                visit(table, &edges, &mut marks, &mut Vec::new(), &mut cycles);
            }
        }
        for (r, cycle) in cycles {
            let msg = format!("references form a cycle: {cycle}");
            self.diagnostics
                .push(Diagnostic::error(&r.file, r.pos, msg));
        }
    }

    fn filter(
        &mut self,
        file: &Path,
        types: &BTreeMap<String, AttrType>,
        from: &RelName,
        f: &Spanned<raw::Filter>,
    ) -> Option<Filter> {
        let Some(column) = &f.value.column else {
            let msg = "a filter needs `column: <name>`";
            self.error(file, pos(f), msg);
            return None;
        };
        let column = self.column(file, column)?;
        match (&f.value.attribute, &f.value.references) {
            (Some(a), None) => {
                if a.value != super::USERNAME && !types.contains_key(&a.value) {
                    self.error(file, pos(a), format!("undefined attribute `{}`", a.value));
                    return None;
                }
                Some(Filter::Attribute {
                    column,
                    attribute: a.value.clone(),
                })
            }
            (None, Some(r)) => {
                let parsed = names::parse_dotted_prefix(&r.value).and_then(|(parts, rest)| {
                    let rest = rest.trim();
                    let inner = rest
                        .strip_prefix('(')
                        .and_then(|s| s.strip_suffix(')'))
                        .ok_or_else(|| "expected `(column)` after the table name".to_string())?;
                    match (parts.as_slice(), names::parse_dotted(inner)?.as_slice()) {
                        ([Part::Name(s), Part::Name(t)], [Part::Name(c)]) => {
                            Ok((RelName::new(s, t), c.clone()))
                        }
                        ([Part::Name(_)], _) => {
                            Err("the referenced table must be schema-qualified".to_string())
                        }
                        _ => Err("expected schema.table(column)".to_string()),
                    }
                });
                match parsed {
                    Ok((table, target_column)) => {
                        self.references.push(Reference {
                            file: file.to_path_buf(),
                            pos: pos(r),
                            source: None,
                            from: from.clone(),
                            to: table.clone(),
                        });
                        Some(Filter::References {
                            column,
                            table,
                            target_column,
                        })
                    }
                    Err(e) => {
                        let msg = format!("malformed reference `{}`: {e}", r.value);
                        self.error(file, pos(r), msg);
                        None
                    }
                }
            }
            (Some(a), Some(_)) => {
                let msg = "a filter has either `attribute` or `references`, not both";
                self.error(file, pos(a), msg);
                None
            }
            (None, None) => {
                let msg =
                    "a filter needs `attribute: <name>` or `references: schema.table(column)`";
                self.error(file, pos(f), msg);
                None
            }
        }
    }

    fn column(&mut self, file: &Path, name: &Spanned<String>) -> Option<String> {
        match names::parse_dotted(&name.value) {
            Ok(parts) => match parts.as_slice() {
                [Part::Name(c)] => Some(c.clone()),
                _ => {
                    let msg = format!("`{}` is not a column name", name.value);
                    self.error(file, pos(name), msg);
                    None
                }
            },
            Err(e) => {
                let msg = format!("malformed column name `{}`: {e}", name.value);
                self.error(file, pos(name), msg);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::AttrValue;

    fn load(text: &str) -> Result<Loaded, Vec<Diagnostic>> {
        load_sources(&[Source {
            path: PathBuf::from("p.yaml"),
            text: text.to_string(),
        }])
    }

    fn messages(problems: &[Diagnostic]) -> Vec<String> {
        problems.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn values_are_kept_as_written() {
        let loaded = load(
            "attributes:\n  zip: { type: text }\n  amount: { type: numeric }\n  n: { type: integer }\n\
             groups:\n  g: { attributes: { zip: &z 02134, amount: [12.50, 123456789012345678901234567890] } }\n\
             users:\n  bob: { password: \"pw\", groups: [g], attributes: { zip: *z, n: [+7, \"-0\"] } }\n",
        )
        .unwrap();
        let text = |s: &str| AttrValue::Text(s.into());
        let policy = loaded.policy();
        assert_eq!(
            policy.groups["g"].attributes["zip"],
            Values::List(vec![text("02134")])
        );
        assert_eq!(
            policy.groups["g"].attributes["amount"],
            Values::List(vec![
                AttrValue::Numeric("12.50".into()),
                AttrValue::Numeric("123456789012345678901234567890".into()),
            ])
        );
        let bob = &policy.users["bob"];
        assert_eq!(bob.attributes["zip"], Values::List(vec![text("02134")]));
        assert_eq!(
            bob.attributes["n"],
            Values::List(vec![AttrValue::Integer(7), AttrValue::Integer(0)])
        );
    }

    #[test]
    fn unknown_keys_do_not_stop_validation_but_misfits_stop_the_file() {
        let problems =
            load("users:\n  bob: { password: pw, shoe: 1, groups: [ghosts] }\n").unwrap_err();
        assert_eq!(
            messages(&problems),
            [
                "p.yaml:2:20: warning: user `bob` has a plain-text password; store a verifier from `rowgate passwd` instead",
                "p.yaml:2:24: unknown field `shoe`, expected one of password, role, groups, tables, read_only, attributes, access, data_sources, default_data_source",
                "p.yaml:2:42: user `bob`: undefined group `ghosts`",
            ]
        );
        // `groups: ghosts` (not a list): the file's definitions are
        // incomplete, so only the reading problems are reported.
        let problems =
            load("users:\n  bob: { password: pw, groups: ghosts, role: [a] }\n").unwrap_err();
        assert_eq!(
            messages(&problems),
            [
                "p.yaml:2:32: `groups` must be a list, like [a, b]",
                "p.yaml:2:46: `role` must be a single value",
            ]
        );
    }
}
