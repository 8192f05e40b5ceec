//! Running the client programs the tests drive (psql, Java, Python, Node):
//! found on PATH, run with a timeout, their output and the `name=value`
//! facts they print.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A program on PATH, or a failure saying how to install it.
pub fn on_path(name: &str, install: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("`{name}` was not found on PATH: {install}"))
}

/// A command with none of the machine's `PG*` or ODBC variables leaking
/// into it.
pub fn command(program: &Path) -> Command {
    let mut c = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("PG") || key_text.starts_with("ODBC") {
            c.env_remove(key);
        }
    }
    c.stdin(Stdio::null());
    c
}

/// Runs a command to its end, killing it after `timeout`.
pub fn run(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = Output {
        status: status.unwrap_or_default(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    if status.is_none() {
        panic!(
            "{cmd:?} did not finish within {timeout:?}\n{}",
            show(&output)
        );
    }
    output
}

pub fn show(output: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `name=value` lines a helper program printed.
pub fn facts(output: &Output) -> BTreeMap<String, String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
