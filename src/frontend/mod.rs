//! Facing clients: startup negotiation, SCRAM authentication, and the
//! session that relays messages between a client and its upstream session,
//! rewriting the ones that carry SQL.

pub mod auth;
pub mod autoprep;
pub mod login;
pub mod messages;
pub mod own;
pub mod refusals;
pub mod session;
pub mod startup;
pub mod tags;

/// SQLSTATEs the frontend sends itself.
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
    pub const UNDEFINED_PSTATEMENT: &str = "26000";
}
