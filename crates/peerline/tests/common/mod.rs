//! Running `peerline node` processes from tests: start one, read the
//! NODE_KEY@ADDR it prints, read its status file, stop it politely or kill
//! it. A [`Fleet`] kills every process it started when it is dropped — on
//! success, on a failed assertion, on a panic — and removes its scratch
//! directory unless the test failed (then the logs are kept and named).

#![allow(dead_code)]

pub mod netns;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const BIN: &str = env!("CARGO_BIN_EXE_peerline");

/// Runs `peerline` to completion (for commands that fail fast).
pub fn peerline(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the peerline binary runs")
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Bad input gets exit 2 and one sentence as the last line on stderr (log
/// lines may come before it), no backtrace.
pub fn assert_clear_error(output: &Output, needle: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    let error_at = text
        .find("error: ")
        .unwrap_or_else(|| panic!("no error: {text}"));
    let error = &text[error_at..];
    assert!(error.contains(needle), "the error lacks {needle:?}: {text}");
    assert!(
        error.trim().lines().count() <= 3,
        "not one clear sentence: {text}"
    );
}

pub fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis())
}

/// One running `peerline node`.
pub struct NodeProcess {
    pub name: String,
    pub child: Child,
    pub data_dir: PathBuf,
    pub status_file: PathBuf,
    pub log_file: PathBuf,
    /// NODE_KEY@ADDR as the node printed it (once read).
    pub bootstrap: Option<String>,
    /// DEVICE_KEY:ACCOUNT_KEY as the node printed it (once read).
    pub messaging: Option<String>,
    lines: mpsc::Receiver<String>,
}

impl NodeProcess {
    pub fn key(&self) -> &str {
        let bootstrap = self.bootstrap.as_deref().expect("bootstrap line read");
        bootstrap.split('@').next().unwrap_or_default()
    }

    /// Waits for the `bootstrap NODE_KEY@ADDR` line the node prints once it
    /// listens; `None` if it did not come within `within` (see the log).
    pub fn read_bootstrap(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        while self.bootstrap.is_none() {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            if let Some(recipient) = line.strip_prefix("messaging ") {
                self.messaging = Some(recipient.trim().to_string());
            }
            if let Some(seed) = line.strip_prefix("bootstrap ") {
                self.bootstrap = Some(seed.trim().to_string());
            }
        }
        self.bootstrap.clone()
    }

    /// Every stdout line read so far past the bootstrap line (non-blocking).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    pub fn status(&self) -> Option<Value> {
        let text = std::fs::read_to_string(&self.status_file).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits up to `within` for the exit.
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        self.send_sigterm();
        self.wait_exit(Instant::now() + within)
    }

    pub fn send_sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Its exit status, once it exits before `deadline`.
    pub fn wait_exit(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL (`kill -9`): a crash, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes started by a test and their scratch directory.
pub struct Fleet {
    pub dir: PathBuf,
    pub nodes: Vec<NodeProcess>,
}

impl Fleet {
    pub fn new(name: &str) -> Fleet {
        let dir = std::env::temp_dir().join(format!(
            "peerline-test-{}-{name}-{}",
            std::process::id(),
            unix_ms()
        ));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Fleet {
            dir,
            nodes: Vec::new(),
        }
    }

    /// Starts `peerline node` with its own data directory (under the
    /// fleet's, named `name` unless `data_dir` says otherwise), a status
    /// file and a log; returns its index. Does not wait for it.
    pub fn start(&mut self, name: &str, args: &[&str]) -> usize {
        let data_dir = self.dir.join(name);
        self.start_in(name, &data_dir, args)
    }

    pub fn start_in(&mut self, name: &str, data_dir: &Path, args: &[&str]) -> usize {
        self.start_wrapped(name, data_dir, &[], args)
    }

    /// [`Fleet::start_in`] with a command in front of the binary (e.g.
    /// `ip netns exec NS`, which execs it: the child is the node itself).
    pub fn start_wrapped(
        &mut self,
        name: &str,
        data_dir: &Path,
        wrapper: &[&str],
        args: &[&str],
    ) -> usize {
        let status_file = self.dir.join(format!("{name}.status.json"));
        let log_file = self.dir.join(format!("{name}.log"));
        let _ = std::fs::remove_file(&status_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .expect("log file");
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(BIN);
                command
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .arg("node")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--status-file")
            .arg(&status_file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("peerline node starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        // Reads until the node exits, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        self.nodes.push(NodeProcess {
            name: name.to_string(),
            child,
            data_dir: data_dir.to_path_buf(),
            status_file,
            log_file,
            bootstrap: None,
            messaging: None,
            lines,
        });
        self.nodes.len() - 1
    }

    /// Reads node `index`'s bootstrap line or fails the test with its log.
    pub fn bootstrap_of(&mut self, index: usize, within: Duration) -> String {
        match self.nodes[index].read_bootstrap(within) {
            Some(seed) => seed,
            None => panic!(
                "node {} printed no bootstrap line within {within:?}; its log:\n{}",
                self.nodes[index].name,
                self.nodes[index].log()
            ),
        }
    }

    /// Polls until `done` holds (true) or `within` passes (false).
    pub fn wait_until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&mut [NodeProcess]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if done(&mut self.nodes) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        if std::thread::panicking() || std::env::var_os("PEERLINE_TEST_KEEP").is_some() {
            eprintln!("node logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The keys a client's status says it is attached to.
pub fn attached(status: &Value) -> Vec<String> {
    status["attached"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|key| key.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The host cache a stopped node saved in its `state.redb`: the keys (hex)
/// of its supernodes, best first. (The `host_cache` table maps a rank to a
/// postcard value that begins with the supernode's 32-byte key.)
pub fn saved_host_keys(data_dir: &Path) -> Vec<String> {
    let db = redb::Database::open(data_dir.join("state.redb")).expect("a state database");
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let table = txn.open_table(HOST_CACHE).unwrap();
    redb::ReadableTable::iter(&table)
        .unwrap()
        .map(|row| {
            let (_, value) = row.unwrap();
            value.value()[..32]
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect()
        })
        .collect()
}

/// Replaces every saved host-cache entry of a stopped node with bytes that
/// do not decode.
pub fn damage_host_cache(data_dir: &Path) {
    let db = redb::Database::open(data_dir.join("state.redb")).expect("a state database");
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(HOST_CACHE).unwrap();
        let len = redb::ReadableTableMetadata::len(&table).unwrap() as u32;
        for rank in 0..len {
            table.insert(rank, &b"\xff\xff\xff"[..]).unwrap();
        }
    }
    txn.commit().unwrap();
}

const HOST_CACHE: redb::TableDefinition<u32, &[u8]> = redb::TableDefinition::new("host_cache");
