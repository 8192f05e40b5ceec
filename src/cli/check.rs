//! `rowgate check`: validate the config and every policy file, reporting every
//! problem as `file:line:column: message`.

use std::path::Path;

use super::{FAILED, OK, REFUSED};
use crate::config::{Config, Env};
use crate::policy;

pub fn run(config_path: &Path) -> u8 {
    if !config_path.exists() {
        eprintln!("{}: cannot read: no such file", config_path.display());
        return FAILED;
    }
    // One run reports everything: the policies are checked even when the
    // config has problems, at the path it names or, where it cannot tell
    // (no readable `policies` value), at the default path.
    let (config, mut problems) = Config::load_all(config_path, Env::Require);
    // The token issuers' keys, read as `serve` reads them.
    if let Some(tokens) = &config.tokens {
        if let Err(key_problems) = crate::tokens::Verifier::load(tokens) {
            problems.extend(key_problems);
            crate::diag::sort(&mut problems);
        }
    }
    match policy::load_path_for(&config.policies, &config.source_names()) {
        Ok(loaded) if problems.is_empty() => {
            super::print_problems(&loaded.warnings);
            let p = loaded.policy();
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
        Ok(loaded) => refuse(problems, loaded.warnings),
        Err(policy_problems) => {
            problems.extend(policy_problems);
            refuse(problems, Vec::new())
        }
    }
}

/// Prints the config's problems, then the policies' (each sorted by
/// position), and the count of errors.
fn refuse(mut problems: Vec<crate::diag::Diagnostic>, more: Vec<crate::diag::Diagnostic>) -> u8 {
    problems.extend(more);
    super::print_problems(&problems);
    let errors = problems.iter().filter(|p| p.is_error()).count();
    eprintln!("{errors} problem(s) found");
    REFUSED
}
