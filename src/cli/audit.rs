//! `rowgate audit verify FILE`: checks an audit log's hash chain.

use std::path::PathBuf;

use clap::Subcommand;

use super::{FAILED, OK, REFUSED};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that no line of an audit log was changed, removed, added or
    /// moved; exits 1 at the first break, naming the line.
    Verify {
        /// The audit log (JSON Lines, as `audit.file` writes it).
        file: PathBuf,
    },
}

pub fn run(command: &Command) -> u8 {
    match command {
        Command::Verify { file } => {
            let reader = match std::fs::File::open(file) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("rowgate: cannot read {}: {e}", file.display());
                    return FAILED;
                }
            };
            match crate::audit::verify(reader) {
                Ok(v) => {
                    println!("{}: {} records, chain intact", file.display(), v.lines);
                    if let Some(prev) = v.first_prev.filter(|p| p != crate::audit::GENESIS) {
                        println!(
                            "first record follows hash {prev} (the end of the file before it)"
                        );
                    }
                    if let Some(last) = v.last_hash {
                        println!("last hash {last}");
                    }
                    OK
                }
                Err(b) => {
                    println!("{}:{}: chain broken: {}", file.display(), b.line, b.why);
                    REFUSED
                }
            }
        }
    }
}
