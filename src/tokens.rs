//! Signed tokens (JWT) as passwords: the `tokens:` section of `proxy.yaml`,
//! each issuer's keys (an HMAC secret, PEM public keys, a JWKS file, or a
//! JWKS fetched over HTTPS and cached), and
//! the verification of one token: header, signature, issuer, audience,
//! validity window, lifetime and subject. What the claims grant is the
//! policy's business ([`crate::policy::TokenIdentity`]).
//!
//! Invariants: `alg: none` is never accepted; a token's algorithm must be
//! one its issuer lists; an HMAC algorithm is only ever checked against an
//! HMAC secret and a public-key algorithm only against public keys of its
//! own family, so a public key is never used as an HMAC secret. Headers
//! that point elsewhere for keys (`jku`, `x5u`, `jwk`) are ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_rustls::rustls;

use crate::diag::{Diagnostic, Pos};

/// The default `max_lifetime`, in seconds.
pub const DEFAULT_MAX_LIFETIME: u64 = 3600;
/// The default `leeway`, in seconds.
pub const DEFAULT_LEEWAY: u64 = 0;
/// The longest token accepted, in bytes; the password message that carries
/// it is bounded by this too.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The longest `jti` an audit record carries as it is (longer ones are
/// recorded as the token's hash).
const MAX_JTI: usize = 128;

/// The algorithms an issuer may list, by their name in `alg`.
pub const ALGORITHMS: &[(&str, Algorithm)] = &[
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// Where a token may travel without TLS (`tokens.plaintext`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Plaintext {
    /// Only over TLS.
    #[default]
    Never,
    /// Over TLS, or from a loopback address.
    Local,
    /// Anywhere (the network is trusted).
    Always,
}

impl Plaintext {
    /// Whether a token may be asked for on this connection.
    pub fn allows(self, tls: bool, peer: std::net::IpAddr) -> bool {
        tls || match self {
            Plaintext::Never => false,
            Plaintext::Local => peer.is_loopback(),
            Plaintext::Always => true,
        }
    }
}

/// Where an issuer's keys are.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An HMAC secret.
    Secret(String),
    /// A PEM file with one or more public keys.
    PublicKeys(PathBuf),
    /// A JWKS file, re-read on SIGHUP.
    Jwks(PathBuf),
    /// A JWKS URL (not supported by this version: `check` says so).
    JwksUrl(String),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Secret(_) => f.write_str("Secret(<redacted>)"),
            KeySource::PublicKeys(p) => write!(f, "PublicKeys({})", p.display()),
            KeySource::Jwks(p) => write!(f, "Jwks({})", p.display()),
            KeySource::JwksUrl(u) => write!(f, "JwksUrl({u})"),
        }
    }
}

/// One `tokens.issuers.<name>` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerConfig {
    pub name: String,
    /// Where the entry is written in `proxy.yaml`.
    pub at: Pos,
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// What their `aud` must hold.
    pub audience: String,
    pub algorithms: Vec<Algorithm>,
    /// Its key sources, each with where it is written (exactly one is valid).
    pub keys: Vec<(KeySource, Pos)>,
    /// Seconds `exp - iat` may reach.
    pub max_lifetime: u64,
    /// Seconds of clock difference tolerated on `exp`, `nbf` and `iat`.
    pub leeway: u64,
}

/// The `tokens:` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokensConfig {
    /// The `proxy.yaml` it was read from (for the positions of problems).
    pub path: PathBuf,
    pub issuers: Vec<IssuerConfig>,
    pub plaintext: Plaintext,
}

/// `30s`, `15m`, `1h`, `1d`, or a number of seconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let scale = match unit.trim() {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// A key family: which algorithms a key may check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Family {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        Algorithm::EdDSA => Family::Ed,
        _ => Family::Rsa,
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    ALGORITHMS
        .iter()
        .find(|(_, a)| *a == alg)
        .map_or("?", |(n, _)| n)
}

/// A JWKS URL's key set is fetched again when older than this, at the next
/// login of its issuer (a rotation is picked up at once: see
/// [`REMOTE_MIN_INTERVAL`]).
pub const REMOTE_MAX_AGE: Duration = Duration::from_secs(600);
/// Fetches of one JWKS URL are at least this far apart, whatever tokens
/// name unknown key ids.
pub const REMOTE_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long a fetch may take.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document accepted.
const REMOTE_MAX_BYTES: usize = 1024 * 1024;

/// One verification key.
struct Key {
    kid: Option<String>,
    family: Family,
    /// The one algorithm a JWK says it is for, if it says.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// An issuer with its keys loaded.
struct Issuer {
    config: IssuerConfig,
    keys: Vec<Key>,
    /// For a JWKS URL: its cached keys (`keys` is then empty).
    remote: Option<Remote>,
}

/// A JWKS URL's keys: fetched at the first login of its issuer, again when
/// a token names a key id the set lacks or the set is older than
/// [`REMOTE_MAX_AGE`], never more often than every
/// [`REMOTE_MIN_INTERVAL`]; a failed fetch keeps the keys there were.
struct Remote {
    url: String,
    state: Mutex<RemoteState>,
    /// One fetch at a time; logins that need it wait for it.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct RemoteState {
    keys: Arc<Vec<Key>>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

impl Remote {
    fn keys(&self) -> Arc<Vec<Key>> {
        self.state
            .lock()
            .map(|s| s.keys.clone())
            .unwrap_or_default()
    }

    /// Whether a login with a token naming `kid` should fetch the set now.
    fn wants(&self, kid: Option<&str>) -> bool {
        let Ok(s) = self.state.lock() else {
            return false;
        };
        let due = s
            .attempted
            .is_none_or(|a| a.elapsed() >= REMOTE_MIN_INTERVAL);
        let unknown = kid.is_some_and(|k| !s.keys.iter().any(|key| key.kid.as_deref() == Some(k)));
        let stale = s.fetched.is_none_or(|f| f.elapsed() >= REMOTE_MAX_AGE);
        due && (s.keys.is_empty() || unknown || stale)
    }
}

/// Every issuer with its keys, as loaded at start and on SIGHUP.
pub struct Verifier {
    issuers: Vec<Issuer>,
    plaintext: Plaintext,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuers", &self.issuers.len())
            .finish_non_exhaustive()
    }
}

/// A token that verified.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The issuer's name in `proxy.yaml`.
    pub issuer: String,
    /// Its claims.
    pub claims: serde_json::Map<String, Value>,
    /// `jti`, or a hash of the token: what logs and audit records name it by.
    pub token_id: String,
}

/// Why a token was refused: for rowgate's log and the audit log only (the
/// client always gets the same `28P01`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The issuer's name, once known.
    pub issuer: Option<String>,
    /// `jti`, or a hash of the token.
    pub token_id: String,
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The hash a token without a usable `jti` is named by.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    format!("sha256:{}", hex::encode(&digest[..16]))
}

impl Verifier {
    /// Loads every issuer's keys; every problem is reported with where its
    /// key source is written in `proxy.yaml`.
    pub fn load(config: &TokensConfig) -> Result<Verifier, Vec<Diagnostic>> {
        let mut problems = Vec::new();
        let mut issuers = Vec::new();
        let file = config.path.as_path();
        for ic in &config.issuers {
            let key = format!("tokens.issuers.{}", ic.name);
            if ic.keys.len() > 1 {
                problems.push(Diagnostic::error(
                    file,
                    ic.keys[1].1,
                    format!("{key}: give one of `secret`, `public_keys` and `jwks`, not several"),
                ));
                continue;
            }
            let Some((source, at)) = ic.keys.first() else {
                continue; // reported by the config reader
            };
            let hmac = ic.algorithms.iter().any(|a| family(*a) == Family::Hmac);
            let public = ic.algorithms.iter().any(|a| family(*a) != Family::Hmac);
            let is_secret = matches!(source, KeySource::Secret(_));
            if is_secret && public {
                problems.push(Diagnostic::error(
                    file,
                    *at,
                    format!("{key}: a `secret` checks HMAC algorithms (HS256, HS384, HS512) only; list public-key algorithms with `public_keys` or `jwks`"),
                ));
                continue;
            }
            if !is_secret && hmac {
                problems.push(Diagnostic::error(
                    file,
                    *at,
                    format!("{key}: HMAC algorithms (HS256, HS384, HS512) need a `secret`; a public key is never used as an HMAC secret"),
                ));
                continue;
            }
            let keys = match source {
                KeySource::Secret(s) if s.starts_with("${") && s.ends_with('}') => Err(format!(
                    "{key}.secret: the environment variable {} is not set",
                    &s[2..s.len() - 1]
                )),
                KeySource::Secret(s) if s.len() < 32 => Err(format!(
                    "{key}.secret: an HMAC secret of {} bytes is too short (at least 32)",
                    s.len()
                )),
                KeySource::Secret(s) => Ok(vec![Key {
                    kid: None,
                    family: Family::Hmac,
                    alg: None,
                    key: DecodingKey::from_secret(s.as_bytes()),
                }]),
                KeySource::PublicKeys(path) => pem_keys(path).map_err(|e| format!("{key}.public_keys: {e}")),
                KeySource::Jwks(path) => jwks_keys(path).map_err(|e| format!("{key}.jwks: {e}")),
                KeySource::JwksUrl(url) => match url.parse::<hyper::Uri>() {
                    Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {
                        // Fetched at the first login that needs it.
                        issuers.push(Issuer {
                            config: ic.clone(),
                            keys: Vec::new(),
                            remote: Some(Remote {
                                url: url.clone(),
                                state: Mutex::default(),
                                fetching: tokio::sync::Mutex::new(()),
                            }),
                        });
                        continue;
                    }
                    _ => Err(format!(
                        "{key}.jwks: `{url}` is not an https URL (a key set travels over TLS only; or name a file)"
                    )),
                },
            };
            match keys {
                Ok(keys) => {
                    for alg in &ic.algorithms {
                        if !keys.iter().any(|k| k.family == family(*alg)) {
                            problems.push(Diagnostic::error(
                                file,
                                *at,
                                format!("{key}: no key for algorithm {}", alg_name(*alg)),
                            ));
                        }
                    }
                    issuers.push(Issuer {
                        config: ic.clone(),
                        keys,
                        remote: None,
                    });
                }
                Err(e) => problems.push(Diagnostic::error(file, *at, e)),
            }
        }
        for (i, a) in config.issuers.iter().enumerate() {
            if config.issuers[..i].iter().any(|b| b.issuer == a.issuer) {
                problems.push(Diagnostic::error(
                    file,
                    a.at,
                    format!(
                        "tokens.issuers.{}: another issuer already has `issuer: {}`",
                        a.name, a.issuer
                    ),
                ));
            }
        }
        if problems.is_empty() {
            Ok(Verifier {
                issuers,
                plaintext: config.plaintext,
            })
        } else {
            Err(problems)
        }
    }

    /// Where tokens may travel without TLS.
    pub fn plaintext(&self) -> Plaintext {
        self.plaintext
    }

    /// Makes sure the keys `token` needs are here, if its issuer's are
    /// fetched from a JWKS URL (see [`Remote`]); then [`Verifier::verify`].
    pub async fn verify_fetching(
        &self,
        token: &str,
        user: &str,
        now: impl Fn() -> u64,
    ) -> Result<Verified, Refused> {
        self.fetch_keys(token).await;
        self.verify(token, user, now())
    }

    async fn fetch_keys(&self, token: &str) {
        if token.len() > MAX_TOKEN_BYTES {
            return;
        }
        let mut parts = token.split('.');
        let (Some(header), Some(claims)) = (
            parts.next().and_then(json_part),
            parts.next().and_then(json_part),
        ) else {
            return;
        };
        let Some(Value::String(iss)) = claims.get("iss") else {
            return;
        };
        let Some(issuer) = self.issuers.iter().find(|i| i.config.issuer == *iss) else {
            return;
        };
        let Some(remote) = &issuer.remote else {
            return;
        };
        let kid = match header.get("kid") {
            Some(Value::String(k)) => Some(k.as_str()),
            _ => None,
        };
        if !remote.wants(kid) {
            return;
        }
        let _one = remote.fetching.lock().await;
        if !remote.wants(kid) {
            return; // fetched while this login waited
        }
        if let Ok(mut s) = remote.state.lock() {
            s.attempted = Some(Instant::now());
        }
        let fetched = match tokio::time::timeout(REMOTE_TIMEOUT, fetch(&remote.url)).await {
            Ok(Ok(body)) => jwks_from_text(&body, &remote.url),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {} s", REMOTE_TIMEOUT.as_secs())),
        };
        match fetched {
            Ok(keys) => {
                tracing::info!(issuer = %issuer.config.name, url = %remote.url, keys = keys.len(), "JWKS fetched");
                if let Ok(mut s) = remote.state.lock() {
                    s.keys = Arc::new(keys);
                    s.fetched = Some(Instant::now());
                }
            }
            Err(e) => tracing::warn!(
                issuer = %issuer.config.name,
                url = %remote.url,
                "cannot fetch the JWKS (the keys there were stay): {e}"
            ),
        }
    }

    /// Verifies `token` for the startup user `user` at `now` (seconds since
    /// the epoch).
    pub fn verify(&self, token: &str, user: &str, now: u64) -> Result<Verified, Refused> {
        let mut refused = Refused {
            issuer: None,
            token_id: token_hash(token),
            reason: String::new(),
        };
        let fail = |mut r: Refused, reason: String| {
            r.reason = reason;
            Err(r)
        };
        if token.len() > MAX_TOKEN_BYTES {
            return fail(
                refused,
                format!("token longer than {MAX_TOKEN_BYTES} bytes"),
            );
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [header_b64, payload_b64, signature] = parts.as_slice() else {
            return fail(
                refused,
                "malformed token: not three dot-separated parts".into(),
            );
        };
        let Some(header) = json_part(header_b64) else {
            return fail(refused, "malformed token header".into());
        };
        let Some(claims) = json_part(payload_b64) else {
            return fail(refused, "malformed token claims".into());
        };
        if let Some(Value::String(jti)) = claims.get("jti") {
            if !jti.is_empty() && jti.len() <= MAX_JTI && !jti.chars().any(char::is_control) {
                refused.token_id = format!("jti:{jti}");
            }
        }
        let alg_text = match header.get("alg") {
            Some(Value::String(a)) => a.clone(),
            _ => return fail(refused, "token header has no `alg`".into()),
        };
        if alg_text.eq_ignore_ascii_case("none") {
            return fail(refused, "alg `none` is never accepted".into());
        }
        let Some(alg) = ALGORITHMS
            .iter()
            .find(|(n, _)| *n == alg_text)
            .map(|(_, a)| *a)
        else {
            return fail(
                refused,
                format!("unknown algorithm `{}`", printable(&alg_text)),
            );
        };
        let iss = match claims.get("iss") {
            Some(Value::String(s)) => s.clone(),
            _ => return fail(refused, "token has no `iss` claim".into()),
        };
        let Some(issuer) = self.issuers.iter().find(|i| i.config.issuer == iss) else {
            return fail(refused, format!("unknown issuer `{}`", printable(&iss)));
        };
        let ic = &issuer.config;
        refused.issuer = Some(ic.name.clone());
        if !ic.algorithms.contains(&alg) {
            return fail(
                refused,
                format!(
                    "algorithm {alg_text} is not one issuer `{}` accepts",
                    ic.name
                ),
            );
        }
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return fail(refused, "token header `kid` is not a string".into()),
        };
        let remote_keys = issuer.remote.as_ref().map(Remote::keys);
        let keys = remote_keys.as_deref().unwrap_or(&issuer.keys);
        let candidates: Vec<&Key> = keys
            .iter()
            .filter(|k| k.family == family(alg))
            .filter(|k| k.alg.is_none_or(|a| a == alg))
            .filter(|k| match (kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            let why = match kid {
                Some(k) => format!(
                    "no key `{}` of issuer `{}` for {alg_text}",
                    printable(k),
                    ic.name
                ),
                None => format!("no key of issuer `{}` for {alg_text}", ic.name),
            };
            return fail(refused, why);
        }
        let message = &token[..header_b64.len() + 1 + payload_b64.len()];
        let good = candidates.iter().any(|k| {
            jsonwebtoken::crypto::verify(signature, message.as_bytes(), &k.key, alg)
                .unwrap_or(false)
        });
        if !good {
            return fail(refused, "bad signature".into());
        }

        // The claims, now that they are the issuer's.
        let leeway = ic.leeway;
        let time = |name: &str| -> Result<Option<u64>, String> {
            match claims.get(name) {
                None => Ok(None),
                Some(Value::Number(n)) => match n.as_f64() {
                    Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
                    _ => Err(format!("`{name}` is not a time")),
                },
                Some(_) => Err(format!("`{name}` is not a number")),
            }
        };
        let exp = match time("exp") {
            Ok(Some(e)) => e,
            Ok(None) => return fail(refused, "token has no `exp` claim".into()),
            Err(e) => return fail(refused, e),
        };
        let iat = match time("iat") {
            Ok(Some(i)) => i,
            Ok(None) => return fail(refused, "token has no `iat` claim".into()),
            Err(e) => return fail(refused, e),
        };
        let nbf = match time("nbf") {
            Ok(n) => n,
            Err(e) => return fail(refused, e),
        };
        if now > exp.saturating_add(leeway) {
            return fail(refused, format!("token expired {} s ago", now - exp));
        }
        if let Some(nbf) = nbf {
            if now.saturating_add(leeway) < nbf {
                return fail(
                    refused,
                    format!("token not valid for another {} s (nbf)", nbf - now),
                );
            }
        }
        if iat > now.saturating_add(leeway) {
            return fail(
                refused,
                format!("token issued {} s in the future (iat)", iat - now),
            );
        }
        if exp.saturating_sub(iat) > ic.max_lifetime {
            return fail(
                refused,
                format!(
                    "token lifetime {} s exceeds max_lifetime {} s",
                    exp - iat,
                    ic.max_lifetime
                ),
            );
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == ic.audience,
            Some(Value::Array(list)) => list
                .iter()
                .any(|a| matches!(a, Value::String(s) if *s == ic.audience)),
            _ => false,
        };
        if !audience_ok {
            return fail(
                refused,
                format!("audience `{}` is not in the token's `aud`", ic.audience),
            );
        }
        match claims.get("sub") {
            Some(Value::String(sub)) if sub == user => {}
            Some(Value::String(sub)) => {
                return fail(
                    refused,
                    format!(
                        "sub `{}` is not the user `{}` the client connected as",
                        printable(sub),
                        printable(user)
                    ),
                )
            }
            _ => return fail(refused, "token has no `sub` claim".into()),
        }
        Ok(Verified {
            issuer: ic.name.clone(),
            claims,
            token_id: refused.token_id,
        })
    }
}

/// A base64url JSON object part of a token.
fn json_part(part: &str) -> Option<serde_json::Map<String, Value>> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// The `sub` of a token, unverified: only to know which user a token is
/// for before verifying it for that user.
pub fn unverified_sub(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    match json_part(payload)?.get("sub")? {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Text from a token, safe to log: at most 64 characters, no control
/// characters.
pub fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > 64 {
        out.push_str("...");
    }
    out
}

/// Every public key of a PEM file.
fn pem_keys(path: &Path) -> Result<Vec<Key>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut keys = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start..];
        let Some(end_label) = after.find("-----END ") else {
            return Err(format!("{}: a PEM block is not closed", path.display()));
        };
        let end = after[end_label..]
            .find("\n")
            .map_or(after.len(), |n| end_label + n);
        let block = &after[..end];
        let header = block.lines().next().unwrap_or_default();
        let bytes = block.as_bytes();
        let key = if header.contains("PRIVATE KEY") {
            return Err(format!(
                "{}: holds a private key; give the public keys only",
                path.display()
            ));
        } else if let Ok(k) = DecodingKey::from_rsa_pem(bytes) {
            (Family::Rsa, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(bytes) {
            (Family::Ec, k)
        } else if let Ok(k) = DecodingKey::from_ed_pem(bytes) {
            (Family::Ed, k)
        } else {
            return Err(format!(
                "{}: `{}` is not an RSA, EC or Ed25519 public key",
                path.display(),
                header.trim()
            ));
        };
        keys.push(Key {
            kid: None,
            family: key.0,
            alg: None,
            key: key.1,
        });
        rest = &after[end..];
    }
    if keys.is_empty() {
        return Err(format!("{}: no PEM public key in it", path.display()));
    }
    Ok(keys)
}

/// Every key of a JWKS file. Symmetric (`oct`) keys are refused: HMAC
/// secrets are given as `secret`.
fn jwks_keys(path: &Path) -> Result<Vec<Key>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    jwks_from_text(&text, &path.display().to_string())
}

/// Every key of a JWKS document; `whence` names it in errors.
fn jwks_from_text(text: &str, whence: &str) -> Result<Vec<Key>, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("{whence}: not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    let mut kids: BTreeMap<String, ()> = BTreeMap::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(_) => Family::Ec,
            AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
            AlgorithmParameters::OctetKey(_) => {
                return Err(format!(
                    "{whence}: key {i} is symmetric (`oct`); HMAC secrets are given as `secret`"
                ))
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{whence}: key {i}: {e}"))?;
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(ka) => {
                let name = format!("{ka:?}");
                ALGORITHMS
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(&name))
                    .map(|(_, a)| *a)
            }
        };
        if let Some(kid) = &jwk.common.key_id {
            if kids.insert(kid.clone(), ()).is_some() {
                return Err(format!("{whence}: key id `{kid}` is used twice"));
            }
        }
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            family,
            alg,
            key,
        });
    }
    if keys.is_empty() {
        return Err(format!("{whence}: the key set is empty"));
    }
    Ok(keys)
}

/// The trust anchors for JWKS URLs: the system's (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` name others), read at each fetch (fetches are rare).
fn roots() -> Result<Arc<rustls::RootCertStore>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err("no trusted root certificates on this machine".to_string());
    }
    Ok(Arc::new(store))
}

/// GET `url` over HTTPS, the server's certificate verified against
/// [`roots`]; the body of a 200 answer, at most [`REMOTE_MAX_BYTES`].
async fn fetch(url: &str) -> Result<String, String> {
    use http_body_util::BodyExt;
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let host = uri.host().ok_or("no host")?.to_string();
    let port = uri.port_u16().unwrap_or(443);
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots()?)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let name = crate::tls::server_name(&bare).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != hyper::StatusCode::OK {
        return Err(format!("HTTP status {}", response.status()));
    }
    let body = http_body_util::Limited::new(response.into_body(), REMOTE_MAX_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| "the answer is not UTF-8".to_string())
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(30));
        assert_eq!(parse_duration("15m"), Some(900));
        assert_eq!(parse_duration("1h"), Some(3600));
        assert_eq!(parse_duration("2d"), Some(172800));
        assert_eq!(parse_duration("45"), Some(45));
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    fn hs_verifier(algorithms: Vec<Algorithm>) -> Verifier {
        let config = TokensConfig {
            path: PathBuf::from("proxy.yaml"),
            issuers: vec![IssuerConfig {
                name: "embed".into(),
                at: Pos::START,
                issuer: "https://app.example.com".into(),
                audience: "rowgate".into(),
                algorithms,
                keys: vec![(KeySource::Secret("k".repeat(32)), Pos::START)],
                max_lifetime: 3600,
                leeway: 0,
            }],
            plaintext: Plaintext::Local,
        };
        Verifier::load(&config).unwrap()
    }

    fn sign(header: &str, claims: &Value, secret: &[u8]) -> String {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let message = format!(
            "{}.{}",
            b64(header.as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{message}.{sig}")
    }

    #[test]
    fn header_and_claim_defects_each_have_their_reason() {
        let v = hs_verifier(vec![Algorithm::HS256]);
        let secret = "k".repeat(32);
        let now = 1_700_000_000u64;
        let good = serde_json::json!({
            "iss": "https://app.example.com", "aud": "rowgate", "sub": "ann",
            "iat": now - 10, "exp": now + 600, "jti": "t-1",
        });
        let hs = r#"{"alg":"HS256","typ":"JWT"}"#;
        let ok = v
            .verify(&sign(hs, &good, secret.as_bytes()), "ann", now)
            .unwrap();
        assert_eq!(
            (ok.issuer.as_str(), ok.token_id.as_str()),
            ("embed", "jti:t-1")
        );

        let reason = |token: &str, user: &str| v.verify(token, user, now).unwrap_err().reason;
        let with = |k: &str, val: Value| {
            let mut c = good.clone();
            c[k] = val;
            sign(hs, &c, secret.as_bytes())
        };
        let cases: Vec<(String, &str)> = vec![
            (
                sign(hs, &good, b"another secret of at least 32 bytes"),
                "bad signature",
            ),
            (
                sign(r#"{"alg":"none"}"#, &good, secret.as_bytes()),
                "alg `none` is never accepted",
            ),
            (
                sign(r#"{"alg":"HS384"}"#, &good, secret.as_bytes()),
                "algorithm HS384 is not one issuer `embed` accepts",
            ),
            (
                sign(r#"{"alg":"XX1"}"#, &good, secret.as_bytes()),
                "unknown algorithm `XX1`",
            ),
            (with("exp", (now - 5).into()), "token expired 5 s ago"),
            (
                with("nbf", (now + 50).into()),
                "token not valid for another 50 s (nbf)",
            ),
            (
                with("exp", (now + 7200).into()),
                "token lifetime 7210 s exceeds max_lifetime 3600 s",
            ),
            (
                with("iss", "https://evil.example.com".into()),
                "unknown issuer `https://evil.example.com`",
            ),
            (
                with("aud", serde_json::json!(["other"])),
                "audience `rowgate` is not in the token's `aud`",
            ),
            (with("exp", "soon".into()), "`exp` is not a number"),
            (
                with("sub", "bob".into()),
                "sub `bob` is not the user `ann` the client connected as",
            ),
            (
                "a.b".into(),
                "malformed token: not three dot-separated parts",
            ),
            ("!!.e30.x".into(), "malformed token header"),
            (
                "x".repeat(MAX_TOKEN_BYTES + 1),
                "token longer than 16384 bytes",
            ),
        ];
        for (token, want) in &cases {
            assert_eq!(reason(token, "ann"), *want, "{token}");
        }
        assert_eq!(cases.len(), 14);
        // No jti: the token is named by its hash, never by itself.
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove("jti");
        let t = sign(hs, &c, secret.as_bytes());
        let id = v.verify(&t, "ann", now).unwrap().token_id;
        assert!(id.starts_with("sha256:") && !t.contains(&id[7..]), "{id}");
    }

    #[test]
    fn a_pem_file_holds_several_keys_of_several_families() {
        let dir = tempfile::tempdir().unwrap();
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let path = dir.path().join("keys.pem");
        std::fs::write(
            &path,
            format!("{}{}", ec.public_key_pem(), ed.public_key_pem()),
        )
        .unwrap();
        let config = TokensConfig {
            path: PathBuf::from("proxy.yaml"),
            issuers: vec![IssuerConfig {
                name: "p".into(),
                at: Pos::START,
                issuer: "i".into(),
                audience: "a".into(),
                algorithms: vec![Algorithm::ES256, Algorithm::EdDSA],
                keys: vec![(KeySource::PublicKeys(path.clone()), Pos::START)],
                max_lifetime: 600,
                leeway: 0,
            }],
            plaintext: Plaintext::Never,
        };
        let v = Verifier::load(&config).unwrap();
        let now = now();
        let claims =
            serde_json::json!({"iss": "i", "aud": "a", "sub": "s", "iat": now, "exp": now + 60});
        let token = |alg, kp: &rcgen::KeyPair| {
            let key = match alg {
                Algorithm::EdDSA => {
                    jsonwebtoken::EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes())
                }
                _ => jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()),
            }
            .unwrap();
            jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key).unwrap()
        };
        assert!(v.verify(&token(Algorithm::ES256, &ec), "s", now).is_ok());
        assert!(v.verify(&token(Algorithm::EdDSA, &ed), "s", now).is_ok());
        let refused = v
            .verify(&token(Algorithm::ES256, &other), "s", now)
            .unwrap_err();
        assert_eq!(refused.reason, "bad signature");
        // A private key in the file is refused: it belongs elsewhere.
        std::fs::write(&path, ec.serialize_pem()).unwrap();
        let e = Verifier::load(&config).unwrap_err();
        assert!(e[0].message.contains("holds a private key"), "{}", e[0]);
    }

    #[test]
    fn secrets_and_public_keys_do_not_mix() {
        let config = |algs: Vec<Algorithm>, source: KeySource| TokensConfig {
            path: PathBuf::from("proxy.yaml"),
            issuers: vec![IssuerConfig {
                name: "e".into(),
                at: Pos::START,
                issuer: "i".into(),
                audience: "a".into(),
                algorithms: algs,
                keys: vec![(source, Pos::START)],
                max_lifetime: 60,
                leeway: 0,
            }],
            plaintext: Plaintext::Never,
        };
        let e = Verifier::load(&config(
            vec![Algorithm::RS256],
            KeySource::Secret("s".repeat(40)),
        ))
        .unwrap_err();
        assert!(e[0].message.contains("HMAC algorithms"), "{}", e[0]);
        let e = Verifier::load(&config(
            vec![Algorithm::HS256],
            KeySource::PublicKeys("nowhere.pem".into()),
        ))
        .unwrap_err();
        assert!(
            e[0].message.contains("never used as an HMAC secret"),
            "{}",
            e[0]
        );
        let e = Verifier::load(&config(
            vec![Algorithm::HS256],
            KeySource::Secret("short".into()),
        ))
        .unwrap_err();
        assert!(e[0].message.contains("too short"), "{}", e[0]);
        // A key set travels over TLS only; an https URL loads (its keys are
        // fetched at the first login).
        let e = Verifier::load(&config(
            vec![Algorithm::RS256],
            KeySource::JwksUrl("http://x/jwks".into()),
        ))
        .unwrap_err();
        assert!(e[0].message.contains("is not an https URL"), "{}", e[0]);
        Verifier::load(&config(
            vec![Algorithm::RS256],
            KeySource::JwksUrl("https://x/jwks".into()),
        ))
        .unwrap();
    }
}
