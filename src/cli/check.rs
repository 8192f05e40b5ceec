//! `rowgate check`: validate the config and every policy file, reporting every
//! problem as `file:line:column: message`.

use std::path::Path;

use super::{FAILED, OK, REFUSED};
use crate::config::{Config, Env};
use crate::policy;

pub fn run(config_path: &Path) -> u8 {
    let mut problems = Vec::new();
    let config = match Config::load(config_path, Env::Require) {
        Ok(c) => Some(c),
        Err(p) => {
            problems.extend(p);
            None
        }
    };
    // Policies are checked even when the config has problems, so that one
    // run reports everything; a config that did not parse falls back on its
    // default policy path.
    let policies = match &config {
        Some(c) => c.policies.clone(),
        None => match Config::load(config_path, Env::Lenient) {
            Ok(c) => c.policies,
            Err(_) if !config_path.exists() => {
                eprintln!("{}: cannot read: no such file", config_path.display());
                return FAILED;
            }
            Err(_) => {
                super::print_problems(&problems);
                eprintln!("{} problem(s) found", problems.len());
                return REFUSED;
            }
        },
    };
    let loaded = match policy::load_path(&policies) {
        Ok(l) => Some(l),
        Err(p) => {
            problems.extend(p);
            None
        }
    };
    match loaded {
        Some(loaded) if problems.is_empty() => {
            super::print_problems(&loaded.warnings);
            let p = &loaded.policy;
            println!(
                "ok: {} and {} policy file(s): {} attribute(s), {} group(s), {} user(s), {} table rule(s), {} warning(s)",
                config_path.display(),
                loaded.files.len(),
                p.attributes.len(),
                p.groups.len(),
                p.users.len(),
                p.tables.len(),
                loaded.warnings.len()
            );
            OK
        }
        _ => {
            super::print_problems(&problems);
            let errors = problems.iter().filter(|p| p.is_error()).count();
            eprintln!("{errors} problem(s) found");
            REFUSED
        }
    }
}
