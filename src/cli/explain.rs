//! `rowgate explain`: print exactly the SQL that would be forwarded upstream
//! for a user, or the refusal with its SQLSTATE. No upstream connection: the
//! catalog is the offline one.

use super::{ConfigArg, FAILED, OK, REFUSED};
use crate::rewrite::{self, Context, OfflineCatalog};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
    /// The user to rewrite for.
    #[arg(long)]
    user: String,
    /// Schemas to resolve unqualified names in, comma-separated (default:
    /// the config's `search_path`).
    #[arg(long, value_delimiter = ',')]
    search_path: Option<Vec<String>>,
    /// The statement(s).
    sql: String,
}

pub fn run(args: &Args) -> u8 {
    let Some(view) = super::load_user(&args.config.config, &args.user) else {
        return FAILED;
    };
    let catalog = OfflineCatalog::new(&view.loaded.policy);
    let search_path = args
        .search_path
        .as_ref()
        .unwrap_or(&view.config.search_path);
    let cx = Context::new(&view.access, &catalog, search_path);
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
