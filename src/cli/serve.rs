//! `rowgate serve`: run the proxy until SIGINT/SIGTERM; SIGHUP reloads policies.

use std::path::Path;

use super::{FAILED, OK};
use crate::config::{Config, Env};
use crate::server::Server;

pub fn run(config_path: &Path) -> u8 {
    let config = match Config::load(config_path, Env::Require) {
        Ok(c) => c,
        Err(problems) => {
            super::print_problems(&problems);
            return FAILED;
        }
    };
    // The listener, signals and reloads; sessions run on worker threads of
    // their own (see `server`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rowgate: cannot start the runtime: {e}");
            return FAILED;
        }
    };
    runtime.block_on(async {
        let server = match Server::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("rowgate: {e}");
                return FAILED;
            }
        };
        match server.run().await {
            Ok(()) => OK,
            Err(e) => {
                eprintln!("rowgate: {e}");
                FAILED
            }
        }
    })
}
