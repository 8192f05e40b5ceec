//! Facing the warehouse: connecting and authenticating a session's upstream
//! connection, forwarding cancels, and the live catalog the rewriter
//! resolves names against.

pub mod catalog;
pub mod connect;
pub mod pool;

pub use catalog::LiveCatalog;
pub use connect::{cancel, cancel_at, connect, connect_within, Connected, UpstreamError};
