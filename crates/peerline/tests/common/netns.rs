//! Network namespaces for the tests that build a lab (`nat.rs`, `lan.rs`):
//! named per run (`<prefix><pid>x<ms><test>-<role>`), deleted when the
//! [`Namespaces`] that made them is dropped — on success, on a failed
//! assertion, on a panic — and those left by a killed run (whose process
//! is gone) swept when the next one starts.

use super::Fleet;
use std::process::Command;

/// Runs a command to completion; panics with its stderr if it fails.
/// Returns its stdout.
pub fn run(args: &[&str]) -> String {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|error| panic!("{args:?}: {error}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The namespaces of one test run.
pub struct Namespaces {
    prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    /// Sweeps namespaces `prefix` left by dead runs first.
    pub fn new(prefix: &str, test: &str) -> Namespaces {
        sweep_stale(prefix);
        Namespaces {
            prefix: format!(
                "{prefix}{}x{}{test}",
                std::process::id(),
                super::unix_ms() % 100_000
            ),
            names: Vec::new(),
        }
    }

    /// A new namespace for `role`, its loopback up.
    pub fn add(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.prefix);
        run(&["ip", "netns", "add", &name]);
        self.names.push(name.clone());
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.names.iter().rev() {
            // Deleting a namespace deletes its veths (and their peers).
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// Deletes `<prefix><pid>…` namespaces whose process is gone.
fn sweep_stale(prefix: &str) {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if pid.is_empty() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = Command::new("ip").args(["netns", "del", name]).output();
    }
}

/// Starts a node in `ns`; returns its index in the fleet.
pub fn start_in(fleet: &mut Fleet, ns: &str, name: &str, args: &[&str]) -> usize {
    let data_dir = fleet.dir.join(name);
    fleet.start_wrapped(name, &data_dir, &["ip", "netns", "exec", ns], args)
}
