//! `rowgate audit verify FILE...`: checks an audit log's hash chain, across
//! rotated files given oldest first.

use std::path::PathBuf;

use clap::Subcommand;

use super::{FAILED, OK, REFUSED};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that no line of an audit log was changed, removed, added or
    /// moved; exits 1 at the first break, naming the line. Several files
    /// (rotated ones, oldest first) must also join: each one's first
    /// record follows the last of the file before it.
    Verify {
        /// The audit log files (JSON Lines, as `audit.file` writes them).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run(command: &Command) -> u8 {
    match command {
        Command::Verify { files } => {
            let mut before: Option<(PathBuf, String)> = None;
            for file in files {
                let reader = match std::fs::File::open(file) {
                    Ok(f) => f,
                    Err(e) => {
                        eprintln!("rowgate: cannot read {}: {e}", file.display());
                        return FAILED;
                    }
                };
                let v = match crate::audit::verify(reader) {
                    Ok(v) => v,
                    Err(b) => {
                        println!("{}:{}: chain broken: {}", file.display(), b.line, b.why);
                        return REFUSED;
                    }
                };
                println!("{}: {} records, chain intact", file.display(), v.lines);
                if let Some(prev) = v
                    .first_prev
                    .as_ref()
                    .filter(|p| *p != crate::audit::GENESIS)
                {
                    println!("first record follows hash {prev} (the end of the file before it)");
                }
                if let (Some((previous, last)), Some(first)) = (&before, &v.first_prev) {
                    if first != last {
                        println!(
                            "{}:1: chain broken: it does not follow the last record of {} (records are missing between them, or the files are out of order)",
                            file.display(),
                            previous.display()
                        );
                        return REFUSED;
                    }
                }
                if let Some(last) = &v.last_hash {
                    println!("last hash {last}");
                    before = Some((file.clone(), last.clone()));
                }
            }
            OK
        }
    }
}
