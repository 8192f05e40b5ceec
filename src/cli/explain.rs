//! `rowgate explain`: print exactly the SQL that would be forwarded upstream
//! for a user, or the refusal with its SQLSTATE. Without `--database` no
//! upstream connection is made and the catalog is the offline one; with it,
//! the catalog is read from that upstream database as the proxy reads it,
//! and the output is what the proxy forwards.

use super::{ConfigArg, FAILED, OK, REFUSED};
use crate::rewrite::{self, Catalog, Context, OfflineCatalog};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    who: super::Who,
    /// Schemas to resolve unqualified names in, comma-separated (default:
    /// the config's `search_path`).
    #[arg(long, value_delimiter = ',')]
    search_path: Option<Vec<String>>,
    /// The database a client would name: it chooses the data source as a
    /// session's does; the catalog of that source's database is read (as
    /// its `user`) and the statement rewritten exactly as the proxy would
    /// for a session on it: with its relations, functions and column types.
    #[arg(long)]
    database: Option<String>,
    /// The statement(s).
    sql: String,
}

pub fn run(args: &Args) -> u8 {
    let Some(view) = super::load_who(&args.config.config, &args.who, args.database.as_deref())
    else {
        return FAILED;
    };
    let offline;
    let live;
    let catalog: &dyn Catalog = match &args.database {
        None => {
            offline = OfflineCatalog::new(&view.policy);
            &offline
        }
        Some(database) => {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return FAILED;
                }
            };
            let Some(source) = view.config.sources.get(&view.policy.data_source) else {
                eprintln!("error: no data source {}", view.policy.data_source);
                return FAILED;
            };
            let database = source.database.as_deref().unwrap_or(database);
            let upstream = crate::upstream::LiveCatalog::new(source.clone());
            match runtime.block_on(upstream.get(database)) {
                Ok(snapshot) => {
                    live = snapshot;
                    &*live
                }
                Err(e) => {
                    eprintln!("error: cannot read the catalog of database {database}: {e}");
                    return FAILED;
                }
            }
        }
    };
    let search_path = args
        .search_path
        .as_ref()
        .unwrap_or(&view.config.search_path);
    let cx = Context::new(&view.access, catalog, search_path);
    // On a thread with the session threads' stack: a statement within the
    // nesting bound must not overflow here either.
    let result = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(rewrite::STACK_BYTES)
            .spawn_scoped(scope, || rewrite::rewrite(&args.sql, &cx))
            .map(|t| t.join())
    });
    let result = match result {
        Ok(Ok(result)) => result,
        _ => {
            eprintln!("error: the rewrite did not complete");
            return FAILED;
        }
    };
    match result {
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
