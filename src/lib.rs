//! rowgate: a PostgreSQL wire-protocol proxy that enforces row-level
//! permissions declared in YAML policy files.
//!
//! The crate is split by what a reader looks for: [`policy`] (the policy
//! model, loading, validation and attribute resolution), [`rewrite`] (pure,
//! synchronous statement classification and filter injection), [`config`]
//! (`proxy.yaml`) and [`cli`] (one module per command).

pub mod audit;
pub mod cli;
pub mod config;
pub mod diag;
pub mod frontend;
pub mod localpg;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod rewrite;
pub mod server;
pub mod tls;
pub mod tokens;
pub mod upstream;
pub mod wire;
