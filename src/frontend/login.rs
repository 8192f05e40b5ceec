//! Who a client is: SCRAM-SHA-256 for the users declared in the policy
//! files; for any other name, when `tokens:` is configured, a signed token
//! sent as a cleartext password (only over TLS, or from loopback with
//! `plaintext: local`, or anywhere with `plaintext: always`).
//!
//! Every failure of a token login is the same `28P01` to the client; the
//! precise reason goes to rowgate's log and the audit log's
//! `login_failure` record, which names the token by its `jti` or a hash,
//! never by the token itself.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use pgwire::messages::startup::Authentication;
use pgwire::messages::Message;
use tokio::io::AsyncWriteExt;
use tracing::warn;

use super::session::Shared;
use super::sqlstate;
use super::startup::Startup;
use super::{auth, messages};
use crate::policy::{Access, PolicySet};
use crate::tls::Stream;
use crate::wire::{self, WireError};

/// Why a login did not produce a session.
pub enum Failed {
    /// The client went away.
    ClientGone,
    /// Refused, with the reason for rowgate's log.
    Rejected(String),
}

async fn fatal(stream: &mut Stream, code: &str, message: &str) {
    let _ = stream
        .write_all(&wire::error_response("FATAL", code, message))
        .await;
    let _ = stream.shutdown().await;
}

/// Authenticates the client of `hello` and resolves its access; on success
/// AuthenticationOk has been sent.
pub async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    hello: &Startup,
    peer: SocketAddr,
    shared: &Shared,
    policy: &PolicySet,
) -> Result<Arc<Access>, Failed> {
    let user = policy.users.get(&hello.user);
    if user.is_none() {
        if let Some(tokens) = &shared.tokens {
            let verifier = tokens.load_full();
            return token(stream, buf, hello, peer, shared, policy, &verifier).await;
        }
    }
    let secret = auth::secret_for(user.map(|u| &u.password), &hello.user, &shared.mock_key);
    let login = auth::scram(stream, buf, &hello.user, secret).await;
    let outcome = if login.is_ok() { "ok" } else { "failed" };
    shared
        .metrics
        .logins
        .with_label_values(&["scram", outcome])
        .inc();
    match login {
        Ok(()) => {}
        Err(auth::AuthError::Wire(_)) => return Err(Failed::ClientGone),
        Err(e) => {
            let why = e.to_string();
            record_failure(shared, peer, hello, "scram", None, &why);
            let code = match e {
                auth::AuthError::Failed(_) => sqlstate::INVALID_PASSWORD,
                _ => sqlstate::PROTOCOL_VIOLATION,
            };
            fatal(stream, code, &why).await;
            return Err(Failed::Rejected(why));
        }
    }
    match policy.access(&hello.user) {
        Some(access) => Ok(access),
        None => {
            // Unreachable: an unknown user's mock secret never authenticates.
            fatal(stream, sqlstate::INVALID_PASSWORD, "authentication failed").await;
            Err(Failed::Rejected("unknown user".into()))
        }
    }
}

/// A token login: ask for a cleartext password where one may travel,
/// verify it, and resolve the identity its claims give.
async fn token(
    stream: &mut Stream,
    buf: &mut BytesMut,
    hello: &Startup,
    peer: SocketAddr,
    shared: &Shared,
    policy: &PolicySet,
    verifier: &crate::tokens::Verifier,
) -> Result<Arc<Access>, Failed> {
    let user = &hello.user;
    let refuse = |issuer: Option<&str>, token_id: Option<&str>, reason: String| {
        let auth = match issuer {
            Some(i) => format!("token:{i}"),
            None => "token".to_string(),
        };
        warn!(
            user = %crate::tokens::printable(user),
            client = %peer,
            auth = %auth,
            token = token_id.unwrap_or("-"),
            "token login refused: {reason}"
        );
        shared
            .metrics
            .logins
            .with_label_values(&["token", "failed"])
            .inc();
        record_failure(shared, peer, hello, &auth, token_id, &reason);
        reason
    };
    let generic = format!("password authentication failed for user \"{user}\"");

    if !verifier.plaintext().allows(stream.is_tls(), peer.ip()) {
        let why = refuse(
            None,
            None,
            format!(
                "a token may not travel in plain text from {} (tokens.plaintext: {:?}); connect with TLS",
                peer.ip(),
                verifier.plaintext()
            ),
        );
        fatal(stream, sqlstate::INVALID_PASSWORD, &generic).await;
        return Err(Failed::Rejected(why));
    }

    let mut out = BytesMut::new();
    if Authentication::CleartextPassword.encode(&mut out).is_err()
        || stream.write_all(&out).await.is_err()
    {
        return Err(Failed::ClientGone);
    }
    // The password message, bounded: a token is small.
    let limit = crate::tokens::MAX_TOKEN_BYTES + 64;
    let frame = match wire::read_frame(stream, buf, limit).await {
        Ok(f) => f,
        Err(WireError::Closed) | Err(WireError::Io(_)) => return Err(Failed::ClientGone),
        Err(e) => {
            let why = refuse(None, None, format!("unreadable password message: {e}"));
            fatal(stream, sqlstate::INVALID_PASSWORD, &generic).await;
            return Err(Failed::Rejected(why));
        }
    };
    if frame.tag() != b'p' {
        let why = refuse(
            None,
            None,
            format!(
                "expected password response, got message type {:?}",
                frame.tag() as char
            ),
        );
        fatal(stream, sqlstate::PROTOCOL_VIOLATION, &why).await;
        return Err(Failed::Rejected(why));
    }
    let token = match messages::password(frame.body()) {
        Some(t) => t,
        None => {
            let why = refuse(None, None, "malformed password message".into());
            fatal(stream, sqlstate::INVALID_PASSWORD, &generic).await;
            return Err(Failed::Rejected(why));
        }
    };

    let checked = verifier
        .verify_fetching(&token, user, crate::tokens::now)
        .await
        .map_err(|r| (r.issuer, r.token_id, r.reason))
        .and_then(|v| {
            let id = policy
                .token_identity(&v.issuer, &v.token_id, &v.claims)
                .and_then(|identity| policy.token_access(&identity));
            id.map_err(|reason| (Some(v.issuer.clone()), v.token_id.clone(), reason))
        });
    match checked {
        Ok(access) => {
            let mut out = BytesMut::new();
            if Authentication::Ok.encode(&mut out).is_err() || stream.write_all(&out).await.is_err()
            {
                return Err(Failed::ClientGone);
            }
            shared
                .metrics
                .logins
                .with_label_values(&["token", "ok"])
                .inc();
            Ok(Arc::new(access))
        }
        Err((issuer, token_id, reason)) => {
            let why = refuse(issuer.as_deref(), Some(&token_id), reason);
            fatal(stream, sqlstate::INVALID_PASSWORD, &generic).await;
            Err(Failed::Rejected(why))
        }
    }
}

/// The audit log's `login_failure` record.
fn record_failure(
    shared: &Shared,
    peer: SocketAddr,
    hello: &Startup,
    auth: &str,
    token_id: Option<&str>,
    why: &str,
) {
    if let Some(audit) = &shared.audit {
        let mut fields = serde_json::Map::new();
        fields.insert("instance".into(), shared.instance.into());
        fields.insert("user".into(), hello.user.clone().into());
        fields.insert("auth".into(), auth.into());
        if let Some(id) = token_id {
            fields.insert("token".into(), id.into());
        }
        fields.insert("client".into(), peer.to_string().into());
        fields.insert("database".into(), hello.database.clone().into());
        fields.insert("reason".into(), why.into());
        audit.record("login_failure", fields);
    }
}
