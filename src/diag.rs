//! Diagnostics with a `file:line:column` position, as `rowgate check` prints
//! them, and the reading of YAML files that produces them.
//!
//! A file is read so that one problem does not hide the next: an unknown key,
//! a key written twice or a value of the wrong shape is recorded where it
//! stands and the reading goes on, so one run reports all of them. Only what
//! leaves the document unreadable stops it (a syntax error, an alias bomb, a
//! merge key), and the problems found before that are still reported.
//!
//! The file formats are declared with [`yaml_struct!`] from the shapes below
//! ([`Text`], [`List`], [`Entries`]) instead of serde's derive, which stops
//! at the first unknown key.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

/// How bad a diagnostic is: errors stop a policy from loading, warnings do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a configuration or policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub severity: Severity,
    pub message: String,
}

impl Diagnostic {
    pub fn error(file: &Path, pos: Pos, message: impl Into<String>) -> Self {
        Self::new(file, pos, Severity::Error, message)
    }

    pub fn warning(file: &Path, pos: Pos, message: impl Into<String>) -> Self {
        Self::new(file, pos, Severity::Warning, message)
    }

    fn new(file: &Path, pos: Pos, severity: Severity, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            severity,
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Sorts diagnostics by file and position (stable: problems at one position
/// keep the order they were found in) and drops exact repeats, which an
/// aliased node read twice produces.
pub fn sort(diagnostics: &mut Vec<Diagnostic>) {
    diagnostics.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    diagnostics.dedup();
}

/// A 1-based line and column in a source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl Pos {
    /// The start of a file, for problems that belong to the file as a whole.
    pub const START: Pos = Pos { line: 1, column: 1 };
}

impl From<Location> for Pos {
    fn from(loc: Location) -> Self {
        Pos {
            line: loc.line().max(1),
            column: loc.column().max(1),
        }
    }
}

// ---------------------------------------------------------------------------
// YAML errors and options
// ---------------------------------------------------------------------------

/// Most events that aliases may replay in one file. Policy files use aliases
/// to share a list or a mapping a few times; a billion-laughs document needs
/// millions. Replayed events are also what the parser keeps in memory.
pub const MAX_REPLAYED_EVENTS: usize = 100_000;
/// Most times one anchor may be used through an alias.
pub const MAX_EXPANSIONS_PER_ANCHOR: usize = 1_000;
/// Deepest nesting of aliases inside aliased nodes.
pub const MAX_ALIAS_NESTING: usize = 16;

/// Turns a YAML error that stopped the reading of a file into a diagnostic at
/// the position the parser names. The message is rendered without any
/// position of its own (the `file:line:column` prefix says it), so it is
/// never cut; library wording that names options a user cannot set is
/// rewritten into plain words.
pub fn from_yaml_error(file: &Path, err: &serde_saphyr::Error) -> Diagnostic {
    let pos = err.location().map(Pos::from).unwrap_or(Pos::START);
    Diagnostic::error(file, pos, err.render_with_formatter(&Plain))
}

/// Messages for the errors rowgate's options make likely, in plain words;
/// every other error keeps the library's user-facing wording.
struct Plain;

impl serde_saphyr::MessageFormatter for Plain {
    fn localizer(&self) -> &dyn serde_saphyr::Localizer {
        &NoPosition
    }

    fn format_message<'a>(&self, err: &'a serde_saphyr::Error) -> Cow<'a, str> {
        use serde_saphyr::budget::BudgetBreach;
        use serde_saphyr::Error as E;
        let text = match err {
            E::AliasReplayLimitExceeded {
                max_total_replayed_events: max,
                ..
            } => format!(
                "too many alias expansions (limit {max} nodes replayed): the file expands anchors beyond what a policy needs"
            ),
            E::AliasExpansionLimitExceeded {
                max_expansions_per_anchor: max,
                ..
            } => format!(
                "an anchor is used through aliases more than {max} times, more than a policy needs"
            ),
            E::AliasReplayStackDepthExceeded { max_depth, .. } => format!(
                "aliases nest more than {max_depth} deep, deeper than a policy needs"
            ),
            E::AliasReplayCounterOverflow { .. } => {
                "too many alias expansions: the file expands anchors beyond what a policy needs"
                    .to_string()
            }
            E::UnknownAnchor { .. } => {
                "this alias names no anchor defined before it".to_string()
            }
            E::MergeKeyNotAllowed { .. } | E::MergeValueNotMapOrSeqOfMaps { .. } => {
                "merge keys (`<<`) are not supported; write the keys out (anchors and aliases of whole values work)"
                    .to_string()
            }
            E::DuplicateMappingKey { key: Some(k), .. } => {
                format!("`{k}` is written twice in this mapping")
            }
            E::DuplicateMappingKey { key: None, .. } => {
                "a key is written twice in this mapping".to_string()
            }
            E::MultipleDocuments { .. } => {
                "the file holds more than one YAML document (`---`); write one".to_string()
            }
            E::Budget { breach, .. } => match breach {
                BudgetBreach::Depth { depth } => {
                    format!("nodes nest {depth} deep, deeper than a policy needs")
                }
                BudgetBreach::Aliases { aliases } => {
                    format!("{aliases} aliases, more than a policy needs")
                }
                BudgetBreach::AliasAnchorRatio { .. } => {
                    "too many aliases for the anchors they use: the file expands anchors beyond what a policy needs"
                        .to_string()
                }
                other => format!("the file exceeds a limit on YAML documents ({other:?})"),
            },
            _ => return serde_saphyr::UserMessageFormatter.format_message(err),
        };
        Cow::Owned(text)
    }
}

/// Renders no positions: the diagnostic's prefix already gives the one that
/// matters. Where an alias is involved, the anchor's position is kept.
struct NoPosition;

impl serde_saphyr::Localizer for NoPosition {
    fn attach_location<'a>(&self, base: Cow<'a, str>, _loc: Location) -> Cow<'a, str> {
        base
    }

    fn alias_used_at(&self, _used: Location) -> String {
        String::new()
    }

    fn alias_defined_at(&self, defined: Location) -> String {
        format!(
            " (the anchor is at line {}, column {})",
            defined.line(),
            defined.column()
        )
    }
}

/// YAML options for every file rowgate reads:
///
/// - aliases may not replay more than [`MAX_REPLAYED_EVENTS`] events, use one
///   anchor more than [`MAX_EXPANSIONS_PER_ANCHOR`] times or nest deeper
///   than [`MAX_ALIAS_NESTING`], so an alias bomb fails at once and small;
/// - merge keys (`<<`) are refused: no policy needs them, and nested merges
///   are the alias bomb that fits any schema;
/// - booleans are `true` and `false` only (no YAML 1.1 `yes`/`no`/`on`/`off`),
///   unknown tags are refused;
/// - keys written twice reach rowgate's own readers, which report them with
///   both positions;
/// - `.nan`, `.inf` and overflowing numbers are passed on, so that a value is
///   kept as written instead of failing the file;
/// - one anchor may serve any number of aliases (a list of tables shared by
///   every group): the limits above bound what aliases cost.
pub fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        with_snippet: false,
        strict_booleans: true,
        reject_unsupported_tags: true,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::PassThrough,
        merge_keys: serde_saphyr::MergeKeyPolicy::Error,
        non_finite_float_policy: serde_saphyr::NonFiniteFloatPolicy::PassThrough,
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_REPLAYED_EVENTS,
            max_replay_stack_depth: MAX_ALIAS_NESTING,
            max_alias_expansions_per_anchor: MAX_EXPANSIONS_PER_ANCHOR,
        },
        budget: serde_saphyr::budget! {
            max_depth: 32,
            max_documents: 1,
            max_recorded_anchor_events: 2 * MAX_REPLAYED_EVENTS,
            max_recorded_anchor_bytes: 8 * 1024 * 1024,
            enforce_alias_anchor_ratio: false,
        },
    }
}

// ---------------------------------------------------------------------------
// Reading a file
// ---------------------------------------------------------------------------

/// A YAML file as read: its value (`None` when the reading stopped) and the
/// problems found, sorted by position.
#[derive(Debug)]
pub struct Read<T> {
    pub value: Option<T>,
    pub problems: Vec<Diagnostic>,
    /// Every value had the shape it needs and the reading did not stop:
    /// the value holds everything the file says, except keys that are
    /// unknown or written twice (both reported).
    pub complete: bool,
}

/// Reads one YAML document whose top level has the shape `T` (a
/// [`yaml_struct!`]). A document that is empty or only comments reads as
/// `T`'s empty value.
pub fn read<T: Shape>(file: &Path, text: &str) -> Read<T::Out> {
    let scope = Scope::enter(text);
    let result =
        serde_saphyr::from_str_with_options::<Option<Spanned<Node<T>>>>(text, yaml_options());
    let mut problems = Vec::new();
    let value = match result {
        Ok(None) => T::null().map(|v| v.finish(Location::UNKNOWN, Location::UNKNOWN)),
        Ok(Some(node)) => match settle(node) {
            Ok(v) => Some(v),
            Err((at, _)) => {
                let msg = format!("the file must be {}", T::EXPECTED);
                problems.push(Diagnostic::error(file, at.into(), msg));
                None
            }
        },
        Err(e) => {
            problems.push(from_yaml_error(file, &e));
            None
        }
    };
    let reading = scope.leave();
    let complete = value.is_some() && !reading.misfits;
    problems.extend(
        reading
            .problems
            .into_iter()
            .map(|(pos, msg)| Diagnostic::error(file, pos, msg)),
    );
    sort(&mut problems);
    Read {
        value,
        problems,
        complete,
    }
}

/// The document being read on this thread: its text, to quote plain scalars
/// as written, and the problems found so far. Problems are kept here rather
/// than in the values being built so that those found before an error that
/// stops the reading are still reported.
struct Reading {
    text: String,
    problems: Vec<(Pos, String)>,
    misfits: bool,
}

thread_local! {
    static READING: RefCell<Vec<Reading>> = const { RefCell::new(Vec::new()) };
}

/// The span of [`read`]: pushes the reading, pops it when done (or unwinding).
struct Scope {
    open: bool,
}

impl Scope {
    fn enter(text: &str) -> Scope {
        READING.with(|r| {
            r.borrow_mut().push(Reading {
                text: text.to_string(),
                problems: Vec::new(),
                misfits: false,
            })
        });
        Scope { open: true }
    }

    fn leave(mut self) -> Reading {
        self.open = false;
        READING
            .with(|r| r.borrow_mut().pop())
            .expect("a reading in progress")
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if self.open {
            READING.with(|r| r.borrow_mut().pop());
        }
    }
}

/// What kind of problem a reader found.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A key to ignore (unknown, or written twice): the rest is intact.
    Key,
    /// A value of the wrong shape, left out: the value read is incomplete.
    Misfit,
}

/// Records a problem of the document being read. Outside [`read`] there is
/// nothing to record it in, and the problem is an error that stops the
/// reading, as `#[serde(deny_unknown_fields)]` would make it.
fn report<E: de::Error>(kind: Kind, at: Location, message: String) -> Result<(), E> {
    READING.with(|r| match r.borrow_mut().last_mut() {
        Some(reading) => {
            reading.misfits |= kind == Kind::Misfit;
            reading.problems.push((at.into(), message));
            Ok(())
        }
        None => Err(E::custom(message)),
    })
}

/// The source text of a scalar as written, from its span in the document
/// being read. Only single-line spans qualify (a typed plain scalar is one
/// token); anything else is left to YAML's reading of it.
fn as_written(at: Location) -> Option<String> {
    let span = at.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    READING.with(|r| {
        let readings = r.borrow();
        let text = readings.last()?.text.get(start..start.checked_add(len)?)?;
        let single = !text.is_empty() && !text.contains(['\n', '\r']) && text.trim() == text;
        single.then(|| text.to_string())
    })
}

// ---------------------------------------------------------------------------
// Shapes: nodes read without failing when they are not what was expected
// ---------------------------------------------------------------------------

/// What a node turned out to be when it was not what was expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    Null,
    Scalar,
    Seq,
    Map,
}

impl Found {
    /// The name serde's messages use for it (`invalid type: sequence, ...`).
    fn name(self) -> &'static str {
        match self {
            Found::Null => "null",
            Found::Scalar => "scalar",
            Found::Seq => "sequence",
            Found::Map => "map",
        }
    }
}

/// A shape a YAML node must have, read without failing when it has another:
/// the reader of each shape takes what it expects and leaves the rest to the
/// caller to report.
pub trait Shape: Sized {
    /// What the node becomes once its position is known.
    type Out;
    /// What the node must be, for messages: "a list, like [a, b]".
    const EXPECTED: &'static str;
    /// What a list of such nodes must be, for messages.
    const LIST: &'static str = "a list";
    /// What a mapping from names to such nodes must be, for messages.
    const ENTRIES: &'static str = "a mapping of names, like { name: ... }";

    /// From a scalar; `None` when a scalar does not fit.
    fn scalar(_text: Text) -> Option<Self> {
        None
    }

    /// From a sequence, consumed whole; `None` when a sequence does not fit.
    fn seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    /// From a mapping, consumed whole; `None` when a mapping does not fit.
    fn map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    /// What an empty node (`~`, `null` or nothing) stands for, if anything.
    fn null() -> Option<Self> {
        None
    }

    /// Completes the value with the node's positions: `referenced` where it
    /// is used (an alias, for an aliased node), `defined` where it is written.
    fn finish(self, referenced: Location, defined: Location) -> Self::Out;
}

/// A node as read: a value of the shape `T`, or what stood there instead.
pub enum Node<T> {
    Value(T),
    Other(Found),
}

impl<'de, T: Shape> Deserialize<'de> for Node<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor(PhantomData))
    }
}

struct NodeVisitor<T>(PhantomData<T>);

impl<T: Shape> NodeVisitor<T> {
    fn scalar<E>(text: Text) -> Result<Node<T>, E> {
        Ok(T::scalar(text).map_or(Node::Other(Found::Scalar), Node::Value))
    }

    /// A scalar YAML gave a type (a number, a boolean): its text as written
    /// is taken from the source once its position is known.
    fn typed<E>(reading: impl ToString) -> Result<Node<T>, E> {
        Self::scalar(Text::Typed(reading.to_string()))
    }
}

impl<'de, T: Shape> Visitor<'de> for NodeVisitor<T> {
    type Value = Node<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::EXPECTED)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node<T>, E> {
        Self::typed(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node<T>, E> {
        Self::typed(v)
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node<T>, E> {
        Self::typed(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node<T>, E> {
        Self::typed(v)
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node<T>, E> {
        Self::typed(v)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node<T>, E> {
        Self::typed(v)
    }
    fn visit_char<E: de::Error>(self, v: char) -> Result<Node<T>, E> {
        Self::scalar(Text::Str(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node<T>, E> {
        Self::scalar(Text::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node<T>, E> {
        Self::scalar(Text::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, _v: &[u8]) -> Result<Node<T>, E> {
        Ok(Node::Other(Found::Scalar))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node<T>, E> {
        Ok(Node::Other(Found::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Node<T>, E> {
        Ok(Node::Other(Found::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node<T>, D::Error> {
        Node::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Node<T>, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Node<T>, A::Error> {
        Ok(T::seq(seq)?.map_or(Node::Other(Found::Seq), Node::Value))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Node<T>, A::Error> {
        Ok(T::map(map)?.map_or(Node::Other(Found::Map), Node::Value))
    }
}

/// Settles a node read with its position: its finished value, or where it
/// stands and what it was. An empty node takes the shape's empty value, if
/// it has one.
pub fn settle<T: Shape>(node: Spanned<Node<T>>) -> Result<T::Out, (Location, Found)> {
    let value = match node.value {
        Node::Value(v) => v,
        Node::Other(Found::Null) => T::null().ok_or((node.referenced, Found::Null))?,
        Node::Other(found) => return Err((node.referenced, found)),
    };
    Ok(value.finish(node.referenced, node.defined))
}

/// Reads the value of the mapping key `name` (a field of a [`yaml_struct!`]):
/// `None` when it is empty, as if left out, or when it has another shape,
/// which is reported.
pub fn field<'de, T: Shape, A: MapAccess<'de>>(
    map: &mut A,
    name: &str,
) -> Result<Option<T::Out>, A::Error> {
    let node: Spanned<Node<T>> = map.next_value()?;
    match node.value {
        Node::Other(Found::Null) => Ok(None),
        _ => match settle(node) {
            Ok(v) => Ok(Some(v)),
            Err((at, _)) => {
                report(
                    Kind::Misfit,
                    at,
                    format!("`{name}` must be {}", T::EXPECTED),
                )?;
                Ok(None)
            }
        },
    }
}

/// Reads one item of a list; `None` (reported) when it has another shape.
/// `expected` says what an item must be.
pub fn item<'de, T: Shape, A: SeqAccess<'de>>(
    seq: &mut A,
    expected: &str,
) -> Result<Option<Option<T::Out>>, A::Error> {
    let Some(node) = seq.next_element::<Spanned<Node<T>>>()? else {
        return Ok(None);
    };
    let value = match node.value {
        Node::Other(found) => {
            let msg = format!("invalid type: {}, expected {expected}", found.name());
            report(Kind::Misfit, node.referenced, msg)?;
            None
        }
        Node::Value(v) => Some(v.finish(node.referenced, node.defined)),
    };
    Ok(Some(value))
}

/// The keys of one mapping, read one at a time. Keys written twice (only
/// the first counts) and, when the mapping has a fixed set of keys, unknown
/// keys are reported where they are written and their values skipped.
pub struct Keys {
    allowed: Option<&'static [&'static str]>,
    seen: HashMap<String, Location>,
}

impl Keys {
    /// A mapping with exactly these keys (each optional).
    pub fn fixed(allowed: &'static [&'static str]) -> Keys {
        Keys {
            allowed: Some(allowed),
            seen: HashMap::new(),
        }
    }

    /// A mapping whose keys are names chosen by the writer.
    pub fn names() -> Keys {
        Keys {
            allowed: None,
            seen: HashMap::new(),
        }
    }

    /// The next key to read the value of, or `None` at the end of the mapping.
    pub fn next<'de, A: MapAccess<'de>>(
        &mut self,
        map: &mut A,
    ) -> Result<Option<Spanned<String>>, A::Error> {
        while let Some(node) = map.next_key::<Spanned<Node<Text>>>()? {
            let problem = match settle(node) {
                Err((at, _)) => Some((Kind::Misfit, at, "a key must be a name".to_string())),
                Ok(key) => match (self.seen.get(&key.value), self.allowed) {
                    (Some(first), _) => Some((
                        Kind::Key,
                        key.defined,
                        format!(
                            "`{}` is written twice in this mapping (first at line {}, column {})",
                            key.value,
                            first.line(),
                            first.column()
                        ),
                    )),
                    (None, Some(allowed)) if !allowed.contains(&key.value.as_str()) => {
                        self.seen.insert(key.value.clone(), key.defined);
                        Some((
                            Kind::Key,
                            key.defined,
                            format!(
                                "unknown field `{}`, expected one of {}",
                                key.value,
                                allowed.join(", ")
                            ),
                        ))
                    }
                    (None, _) => {
                        self.seen.insert(key.value.clone(), key.defined);
                        return Ok(Some(key));
                    }
                },
            };
            if let Some((kind, at, message)) = problem {
                report(kind, at, message)?;
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(None)
    }
}

/// A single value: a scalar as text. A plain scalar that YAML would type (a
/// number, a boolean) is kept exactly as written: `02134` stays `02134`,
/// `12.50` stays `12.50`, `0x1A` stays `0x1A`.
pub enum Text {
    /// A string scalar, as YAML read it (quotes and escapes resolved).
    Str(String),
    /// A scalar YAML typed, with YAML's reading of it (used only when its
    /// text as written cannot be found).
    Typed(String),
}

impl Shape for Text {
    type Out = Spanned<String>;
    const EXPECTED: &'static str = "a single value";
    const LIST: &'static str = "a list, like [a, b]";

    fn scalar(text: Text) -> Option<Self> {
        Some(text)
    }

    fn finish(self, referenced: Location, defined: Location) -> Spanned<String> {
        let text = match self {
            Text::Str(s) => s,
            Text::Typed(reading) => as_written(defined).unwrap_or(reading),
        };
        Spanned::new(text, referenced, defined)
    }
}

/// A list of nodes of the shape `T`, in the order written. Items of another
/// shape are reported and left out.
pub struct List<T: Shape>(Vec<T::Out>);

impl<T: Shape> Shape for List<T> {
    type Out = Vec<T::Out>;
    const EXPECTED: &'static str = T::LIST;

    fn seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Option<Self>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = item::<T, A>(&mut seq, T::EXPECTED)? {
            items.extend(item);
        }
        Ok(Some(List(items)))
    }

    fn null() -> Option<Self> {
        Some(List(Vec::new()))
    }

    fn finish(self, _referenced: Location, _defined: Location) -> Vec<T::Out> {
        self.0
    }
}

/// A mapping from names to nodes of the shape `T`, in the order written.
/// Entries of another shape are reported and left out.
pub struct Entries<T: Shape>(Vec<(Spanned<String>, T::Out)>);

impl<T: Shape> Shape for Entries<T> {
    type Out = Vec<(Spanned<String>, T::Out)>;
    const EXPECTED: &'static str = T::ENTRIES;

    fn map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Self>, A::Error> {
        let mut entries = Vec::new();
        let mut keys = Keys::names();
        while let Some(key) = keys.next(&mut map)? {
            match settle(map.next_value::<Spanned<Node<T>>>()?) {
                Ok(value) => entries.push((key, value)),
                Err((at, _)) => {
                    let msg = format!("`{}` must be {}", key.value, T::EXPECTED);
                    report(Kind::Misfit, at, msg)?;
                }
            }
        }
        Ok(Some(Entries(entries)))
    }

    fn null() -> Option<Self> {
        Some(Entries(Vec::new()))
    }

    fn finish(self, _referenced: Location, _defined: Location) -> Self::Out {
        self.0
    }
}

/// Declares a mapping with a fixed set of keys, all optional, and reads it
/// as a [`Shape`]: every unknown key is reported (with the keys the mapping
/// accepts) and skipped, and the reading goes on.
///
/// ```text
/// yaml_struct! {
///     /// A row filter.
///     pub struct Filter: "a filter, like { column: c, attribute: a }" {
///         "column" => column: Spanned<String> as Text,
///         "attribute" => attribute: Spanned<String> as Text,
///     }
/// }
/// ```
///
/// Each field is `Option<Out>` where `Out` is what its shape reads to. An
/// empty mapping or an empty node (`name:` with nothing after it) reads as
/// every field absent. The struct itself reads to `Spanned<Self>`.
macro_rules! yaml_struct {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident: $expected:literal {
            $( $(#[$fmeta:meta])* $key:literal => $field:ident: $out:ty as $shape:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Default)]
        $vis struct $name {
            $( $(#[$fmeta])* pub $field: Option<$out>, )*
        }

        impl $name {
            /// The keys this mapping accepts, in the order they are documented.
            pub const KEYS: &'static [&'static str] = &[$($key),*];
        }

        impl $crate::diag::Shape for $name {
            type Out = serde_saphyr::Spanned<$name>;
            const EXPECTED: &'static str = $expected;

            fn map<'de, A: serde::de::MapAccess<'de>>(
                mut map: A,
            ) -> Result<Option<Self>, A::Error> {
                let mut out = Self::default();
                let mut keys = $crate::diag::Keys::fixed(Self::KEYS);
                while let Some(key) = keys.next(&mut map)? {
                    match key.value.as_str() {
                        $( $key => out.$field = $crate::diag::field::<$shape, A>(&mut map, $key)?, )*
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(Some(out))
            }

            fn null() -> Option<Self> {
                Some(Self::default())
            }

            fn finish(
                self,
                referenced: serde_saphyr::Location,
                defined: serde_saphyr::Location,
            ) -> Self::Out {
                serde_saphyr::Spanned::new(self, referenced, defined)
            }
        }
    };
}

pub(crate) use yaml_struct;

#[cfg(test)]
mod tests {
    use super::*;

    yaml_struct! {
        struct Inner: "an inner mapping" {
            "a" => a: Spanned<String> as Text,
            "list" => list: Vec<Spanned<String>> as List<Text>,
        }
    }

    yaml_struct! {
        struct Outer: "an outer mapping" {
            "inner" => inner: Spanned<Inner> as Inner,
            "names" => names: Vec<(Spanned<String>, Spanned<Inner>)> as Entries<Inner>,
        }
    }

    fn read_outer(text: &str) -> Read<Spanned<Outer>> {
        read::<Outer>(Path::new("f.yaml"), text)
    }

    fn messages(r: &Read<Spanned<Outer>>) -> Vec<String> {
        r.problems.iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn every_unknown_key_is_reported_and_the_rest_is_read() {
        let r = read_outer("x: 1\ninner: { a: 1, b: 2, list: [p, q], c: 3 }\ny: [1]\n");
        assert_eq!(
            messages(&r),
            [
                "f.yaml:1:1: unknown field `x`, expected one of inner, names",
                "f.yaml:2:16: unknown field `b`, expected one of a, list",
                "f.yaml:2:36: unknown field `c`, expected one of a, list",
                "f.yaml:3:1: unknown field `y`, expected one of inner, names",
            ]
        );
        assert!(r.complete);
        let outer = r.value.unwrap().value;
        let inner = outer.inner.unwrap().value;
        assert_eq!(inner.a.unwrap().value, "1");
        let list: Vec<_> = inner.list.unwrap().into_iter().map(|s| s.value).collect();
        assert_eq!(list, ["p", "q"]);
    }

    #[test]
    fn misfits_are_reported_and_the_reading_goes_on() {
        let r = read_outer("inner: { a: [1], list: x }\nnames: { n: 5, m: { a: ok } }\n");
        assert_eq!(
            messages(&r),
            [
                "f.yaml:1:13: `a` must be a single value",
                "f.yaml:1:24: `list` must be a list, like [a, b]",
                "f.yaml:2:13: `n` must be an inner mapping",
            ]
        );
        assert!(!r.complete);
        let names = r.value.unwrap().value.names.unwrap();
        assert_eq!(names.len(), 1);
        assert_eq!(names[0].0.value, "m");
    }

    #[test]
    fn keys_written_twice_are_reported_with_the_first_position() {
        let r = read_outer("names:\n  n: {}\n  n: { a: x }\ninner: {}\ninner: {}\n");
        assert_eq!(
            messages(&r),
            [
                "f.yaml:3:3: `n` is written twice in this mapping (first at line 2, column 3)",
                "f.yaml:5:1: `inner` is written twice in this mapping (first at line 4, column 1)",
            ]
        );
        assert_eq!(r.value.unwrap().value.names.unwrap().len(), 1);
    }

    #[test]
    fn plain_scalars_keep_their_text_as_written() {
        let r = read_outer(
            "\u{feff}inner:\r\n  list: [02134, 12.50, 0x1A, 1e3, true, &z 007, *z, '08', 123456789012345678901234567890]\r\n",
        );
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let list: Vec<String> = r
            .value
            .unwrap()
            .value
            .inner
            .unwrap()
            .value
            .list
            .unwrap()
            .into_iter()
            .map(|s| s.value)
            .collect();
        assert_eq!(
            list,
            [
                "02134",
                "12.50",
                "0x1A",
                "1e3",
                "true",
                "007",
                "007",
                "08",
                "123456789012345678901234567890"
            ]
        );
    }

    #[test]
    fn an_empty_document_reads_as_an_empty_mapping() {
        let r = read_outer("# nothing\n");
        assert!(r.problems.is_empty() && r.complete);
        assert!(r.value.unwrap().value.inner.is_none());
        let r = read_outer("[1, 2]\n");
        assert_eq!(
            messages(&r),
            ["f.yaml:1:1: the file must be an outer mapping"]
        );
    }

    #[test]
    fn alias_errors_keep_their_whole_message() {
        let r = read_outer("inner: &i { a: x }\nnames: { n: *i, m: *nope }\n");
        let all = messages(&r).join("\n");
        assert!(all.starts_with("f.yaml:2:20: "), "{all}");
        assert!(!all.contains(" at line"), "{all}");
    }

    #[test]
    fn an_alias_bomb_fails_at_once() {
        let mut text = String::from("names:\n  l0: &l0 { a: x }\n");
        for i in 1..10 {
            let refs = vec![format!("*l{}", i - 1); 10].join(", ");
            text.push_str(&format!("  l{i}: &l{i} {{ list: [{refs}] }}\n"));
        }
        let started = std::time::Instant::now();
        let r = read_outer(&text);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let all = messages(&r).join("\n");
        assert!(all.contains("too many alias expansions"), "{all}");

        let merge = "names:\n  a: &a { a: x }\n  b: { <<: *a }\n";
        let all = messages(&read_outer(merge)).join("\n");
        assert!(
            all.contains("f.yaml:3:8: merge keys (`<<`) are not supported"),
            "{all}"
        );
    }

    #[test]
    fn outside_a_reading_problems_are_errors() {
        let e = serde_saphyr::from_str::<Node<Outer>>("z: 1\n")
            .err()
            .unwrap();
        assert!(e.to_string().contains("unknown field `z`"), "{e}");
    }
}
