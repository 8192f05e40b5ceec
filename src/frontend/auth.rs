//! SCRAM-SHA-256 authentication of clients against the policy's users, with
//! pgwire's SCRAM server. An unknown user goes through the same exchange with
//! a mock secret and fails the same way as a wrong password, so user names
//! cannot be probed.

use base64::Engine;
use bytes::BytesMut;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramSecret, ScramServerAuth};
use pgwire::messages::startup::Authentication;
use pgwire::messages::Message;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::policy::Password;
use crate::wire::{self, WireError};

/// SASL messages are small.
const MAX_SASL_MESSAGE: usize = 16 * 1024;

const ITERATIONS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    #[error("expected SASL response, got message type {0:?}")]
    Unexpected(char),
    #[error("{0}")]
    Mechanism(String),
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// The secret a login is checked against.
pub fn secret_for(password: Option<&Password>, user: &str, mock_key: &[u8; 32]) -> ScramSecret {
    match password {
        Some(Password::Scram(verifier)) => {
            parse_verifier(verifier).unwrap_or_else(|| mock_secret(user, mock_key))
        }
        Some(Password::Plain(plain)) if !plain.is_empty() => {
            let salt: [u8; 16] = rand::random();
            ScramSecret::SaltedPassword {
                salt: salt.to_vec(),
                salted_password: gen_salted_password(plain, &salt, ITERATIONS),
            }
        }
        _ => mock_secret(user, mock_key),
    }
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
fn parse_verifier(text: &str) -> Option<ScramSecret> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).ok();
    let rest = text.strip_prefix("SCRAM-SHA-256$")?;
    let (params, keys) = rest.split_once('$')?;
    let (iterations, salt) = params.split_once(':')?;
    let (stored, server) = keys.split_once(':')?;
    Some(ScramSecret::Verifier {
        salt: b64(salt)?,
        iterations: iterations.parse().ok()?,
        stored_key: b64(stored)?,
        server_key: b64(server)?,
    })
}

/// A secret no password matches, with a salt that is stable per user name
/// (as PostgreSQL's mock authentication does) so that it looks like a real one.
fn mock_secret(user: &str, mock_key: &[u8; 32]) -> ScramSecret {
    use std::hash::{Hash, Hasher};
    let mut salt = Vec::with_capacity(16);
    for round in 0u8..2 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (mock_key, user, round).hash(&mut h);
        salt.extend_from_slice(&h.finish().to_be_bytes());
    }
    ScramSecret::Verifier {
        salt,
        iterations: ITERATIONS,
        stored_key: rand::random::<[u8; 32]>().to_vec(),
        server_key: rand::random::<[u8; 32]>().to_vec(),
    }
}

/// Runs the SCRAM-SHA-256 exchange; on success AuthenticationOk has been sent.
pub async fn scram<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    user: &str,
    secret: ScramSecret,
) -> Result<(), AuthError> {
    let failed = || AuthError::Failed(user.to_string());
    send(
        stream,
        Authentication::SASL(vec!["SCRAM-SHA-256".to_string()]),
    )
    .await?;

    let first = read_sasl(stream, buf).await?;
    let (mechanism, data) = super::messages::sasl_initial(&first)?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(AuthError::Mechanism(format!(
            "SASL authentication mechanism {mechanism} is not supported"
        )));
    }
    let server = ScramServerAuth::new();
    let (server_first, waiting) = server
        .on_client_first_message_with_secret(data, secret)
        .map_err(|e| AuthError::Mechanism(e.to_string()))?;
    send(
        stream,
        Authentication::SASLContinue(server_first.into_bytes().into()),
    )
    .await?;

    let last = read_sasl(stream, buf).await?;
    let server_final = waiting
        .on_client_final_message(&last)
        .map_err(|_| failed())?;
    send(
        stream,
        Authentication::SASLFinal(server_final.into_bytes().into()),
    )
    .await?;
    send(stream, Authentication::Ok).await?;
    Ok(())
}

async fn read_sasl<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Vec<u8>, AuthError> {
    let frame = wire::read_frame(stream, buf, MAX_SASL_MESSAGE).await?;
    if frame.tag() != b'p' {
        return Err(AuthError::Unexpected(frame.tag() as char));
    }
    Ok(frame.body().to_vec())
}

async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    message: Authentication,
) -> Result<(), AuthError> {
    let mut out = BytesMut::new();
    message
        .encode(&mut out)
        .map_err(|e| AuthError::Mechanism(e.to_string()))?;
    stream.write_all(&out).await.map_err(WireError::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_parse() {
        let v = postgres_protocol::password::scram_sha_256(b"pw");
        assert!(matches!(
            parse_verifier(&v),
            Some(ScramSecret::Verifier {
                iterations: 4096,
                ..
            })
        ));
        assert!(parse_verifier("SCRAM-SHA-256$x").is_none());
    }

    #[test]
    fn mock_salts_are_stable_per_user() {
        let key = [7u8; 32];
        let salt = |u| match mock_secret(u, &key) {
            ScramSecret::Verifier { salt, .. } => salt,
            _ => unreachable!(),
        };
        assert_eq!(salt("a"), salt("a"));
        assert_ne!(salt("a"), salt("b"));
    }
}
