//! The command line (SPEC §1): one module per command.

pub mod access;
mod audit;
mod check;
pub mod demo;
mod explain;
mod passwd;
mod serve;

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Env};
use crate::policy::{self, Loaded};

/// Exit code for success.
pub const OK: u8 = 0;
/// Exit code for a refusal (`explain`) or problems found (`check`).
pub const REFUSED: u8 = 1;
/// Exit code for anything that stopped the command from doing its work.
pub const FAILED: u8 = 2;

/// rowgate: a PostgreSQL proxy that enforces row-level permissions.
#[derive(Debug, Parser)]
#[command(name = "rowgate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy until SIGINT/SIGTERM; SIGHUP reloads policies.
    Serve(ConfigArg),
    /// Validate the config and every policy file.
    Check(ConfigArg),
    /// Print the SQL that would be forwarded upstream for a user, or the refusal.
    Explain(explain::Args),
    /// Show a user's role, readable tables, filters and attribute values.
    Access(access::Args),
    /// Read a password on stdin and print a SCRAM-SHA-256 verifier.
    Passwd,
    /// Work with audit logs.
    #[command(subcommand)]
    Audit(audit::Command),
    /// Start a throwaway PostgreSQL with sample data and the proxy in front of it.
    Demo,
}

/// The `-c` option every command that reads a config takes.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Path to proxy.yaml.
    #[arg(short = 'c', long = "config", default_value = "proxy.yaml")]
    pub config: PathBuf,
}

impl Cli {
    /// Runs the command and returns the process exit code.
    pub fn run(self) -> u8 {
        match self.command {
            Command::Check(c) => check::run(&c.config),
            Command::Explain(args) => explain::run(&args),
            Command::Access(args) => access::run(&args),
            Command::Passwd => passwd::run(),
            Command::Audit(c) => audit::run(&c),
            Command::Serve(c) => serve::run(&c.config),
            Command::Demo => demo::run(),
        }
    }
}

/// What `explain` and `access` work on: the config, its policies, and one
/// user's resolved access.
struct UserView {
    config: Config,
    /// The policy set of the data source the user's session would use.
    policy: std::sync::Arc<crate::policy::PolicySet>,
    access: std::sync::Arc<crate::policy::Access>,
}

/// The access of a user (or token holder) resolved on every source's
/// policies, taken to the data source a session naming `database` would
/// use, as a session is.
fn on_source(
    config: Config,
    loaded: Loaded,
    access: std::sync::Arc<crate::policy::Access>,
    database: Option<&str>,
) -> Option<UserView> {
    let policies = &loaded.policies;
    let source = match policies.choose(&access, database.unwrap_or("")) {
        Ok(s) => s,
        Err(refusal) => {
            eprintln!("rowgate: {refusal}");
            return None;
        }
    };
    let policy = policies.get(&source)?.clone();
    let Some(access) = policy.reresolve(&access) else {
        eprintln!("rowgate: the user does not resolve on data source {source}");
        return None;
    };
    Some(UserView {
        config,
        policy,
        access,
    })
}

/// Who `explain` and `access` work for: a declared user (`--user`) or the
/// holder of a signed token (`--token`).
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Who {
    /// The user to show.
    #[arg(long)]
    user: Option<String>,
    /// A signed token (JWT): it is verified with the config's `tokens:`
    /// issuers, as the proxy verifies it, and its claims resolved.
    #[arg(long)]
    token: Option<String>,
}

/// Loads the config (leniently: these commands never go upstream), its
/// policies and the access of `who`, printing problems to stderr.
fn load_who(config: &Path, who: &Who, database: Option<&str>) -> Option<UserView> {
    match (&who.user, &who.token) {
        (Some(user), _) => load_user(config, user, database),
        (None, Some(token)) => load_token(config, token, database),
        (None, None) => None,
    }
}

/// As [`load_user`], for the holder of a signed token: the token is
/// verified (signature, issuer, audience, times) and its claims resolved
/// exactly as a token login does.
fn load_token(config_path: &Path, token: &str, database: Option<&str>) -> Option<UserView> {
    let config = match Config::load(config_path, Env::Lenient) {
        Ok(c) => c,
        Err(problems) => {
            print_problems(&problems);
            return None;
        }
    };
    let Some(tokens) = &config.tokens else {
        eprintln!(
            "rowgate: {} has no `tokens:` section",
            config_path.display()
        );
        return None;
    };
    let verifier = match crate::tokens::Verifier::load(tokens) {
        Ok(v) => v,
        Err(problems) => {
            print_problems(&problems);
            return None;
        }
    };
    let loaded = match policy::load_path_for(&config.policies, &config.source_names()) {
        Ok(loaded) => loaded,
        Err(problems) => {
            print_problems(&problems);
            return None;
        }
    };
    // The user a client would connect as is the token's own `sub`.
    let sub = crate::tokens::unverified_sub(token).unwrap_or_default();
    if loaded.policy().users.contains_key(&sub) {
        eprintln!("rowgate: token refused: `{sub}` is a declared user, who logs in with SCRAM, never a token");
        return None;
    }
    // A JWKS URL's keys are fetched as the proxy fetches them.
    let verified = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(verifier.verify_fetching(token, &sub, crate::tokens::now)),
        Err(e) => {
            eprintln!("rowgate: {e}");
            return None;
        }
    };
    let access = verified.map_err(|r| r.reason).and_then(|v| {
        loaded
            .policy()
            .token_identity(&v.issuer, &v.token_id, &v.claims)
            .and_then(|identity| loaded.policy().token_access(&identity))
    });
    match access {
        Ok(access) => on_source(config, loaded, std::sync::Arc::new(access), database),
        Err(reason) => {
            eprintln!("rowgate: token refused: {reason}");
            None
        }
    }
}

/// Loads the config (leniently: these commands never go upstream), its
/// policies and `user`'s access, printing problems to stderr.
fn load_user(config: &Path, user: &str, database: Option<&str>) -> Option<UserView> {
    let config = match Config::load(config, Env::Lenient) {
        Ok(c) => c,
        Err(problems) => {
            print_problems(&problems);
            return None;
        }
    };
    let loaded = match policy::load_path_for(&config.policies, &config.source_names()) {
        Ok(loaded) => loaded,
        Err(problems) => {
            print_problems(&problems);
            return None;
        }
    };
    let Some(access) = loaded.policy().access(user) else {
        eprintln!("rowgate: no user `{user}` in the policies");
        return None;
    };
    on_source(config, loaded, access, database)
}

fn print_problems(problems: &[crate::diag::Diagnostic]) {
    for p in problems {
        eprintln!("{p}");
    }
}
