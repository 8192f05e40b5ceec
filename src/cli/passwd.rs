//! `rowgate passwd`: read a password on stdin, print a SCRAM-SHA-256 verifier
//! (the format PostgreSQL stores) to paste into a policy file.

use std::io::{BufRead, IsTerminal};

use super::{FAILED, OK};

pub fn run() -> u8 {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password (shown as typed): ");
    }
    let mut line = String::new();
    if let Err(e) = stdin.lock().read_line(&mut line) {
        eprintln!("rowgate: cannot read the password: {e}");
        return FAILED;
    }
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        eprintln!("rowgate: the password is empty");
        return FAILED;
    }
    println!(
        "{}",
        postgres_protocol::password::scram_sha_256(password.as_bytes())
    );
    OK
}
