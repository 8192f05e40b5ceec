//! `rowgate explain`: print exactly the SQL that would be forwarded upstream
//! for a user, or the refusal with its SQLSTATE. No upstream connection: the
//! catalog is the offline one.

use std::path::PathBuf;

use super::{FAILED, OK, REFUSED};
use crate::rewrite::{self, Context, OfflineCatalog};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Path to proxy.yaml.
    #[arg(short = 'c', long = "config", default_value = "proxy.yaml")]
    config: PathBuf,
    /// The user to rewrite for.
    #[arg(long)]
    user: String,
    /// Schemas to resolve unqualified names in, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "public")]
    search_path: Vec<String>,
    /// The statement(s).
    sql: String,
}

pub fn run(args: &Args) -> u8 {
    let Some(loaded) = super::load_policies(&args.config) else {
        return FAILED;
    };
    let Some(access) = loaded.policy.access(&args.user) else {
        eprintln!("rowgate: no user `{}` in the policies", args.user);
        return FAILED;
    };
    let catalog = OfflineCatalog::new(&loaded.policy);
    let cx = Context {
        access: &access,
        catalog: &catalog,
        search_path: &args.search_path,
    };
    match rewrite::rewrite(&args.sql, &cx) {
        Ok(rewritten) => {
            println!("{}", rewritten.sql);
            OK
        }
        Err(refusal) => {
            println!("ERROR {}: {refusal}", refusal.sqlstate());
            REFUSED
        }
    }
}
