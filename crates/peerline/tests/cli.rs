//! The `peerline` command as a user meets it: clear errors for bad input,
//! the same digest from the same seed in separate processes, and the
//! account commands (`account create`, `whoami`, `lookup`) against a small
//! network of `peerline node` processes on loopback.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn peerline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peerline"))
        .args(args)
        .output()
        .expect("the peerline binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peerline-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Bad input gets one sentence on stderr and a non-zero exit, no backtrace.
fn assert_clear_error(output: &Output, needle: &str) {
    assert!(!output.status.success());
    let text = stderr(output);
    assert!(text.contains(needle), "stderr lacks {needle:?}: {text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        text.trim().lines().count() <= 3,
        "not one clear sentence: {text}"
    );
}

#[test]
fn unknown_scenario_is_named() {
    let output = peerline(&[
        "sim",
        "nosuch",
        "--out",
        scratch("unknown").to_str().unwrap(),
    ]);
    assert_clear_error(&output, "unknown scenario 'nosuch'");
    assert!(stderr(&output).contains("steady"), "the choices are listed");
}

#[test]
fn zero_clients_is_refused() {
    let output = peerline(&[
        "sim",
        "steady",
        "--clients",
        "0",
        "--out",
        scratch("zero").to_str().unwrap(),
    ]);
    assert_clear_error(&output, "--clients must be at least 1");
}

#[test]
fn bad_outage_knobs_are_refused() {
    let out = scratch("outage");
    let out = out.to_str().unwrap();
    let output = peerline(&["sim", "supernode-crash", "--fraction", "1.5", "--out", out]);
    assert_clear_error(&output, "--fraction must be in (0, 1]");
    let output = peerline(&[
        "sim",
        "restart-storm",
        "--capacity-factor",
        "0.5",
        "--out",
        out,
    ]);
    assert_clear_error(&output, "--capacity-factor must be at least 1.0");
    let output = peerline(&["sim", "restart-storm", "--duration", "10m", "--out", out]);
    assert_clear_error(&output, "must leave at least a minute after the outage");
}

#[test]
fn bad_cpu_model_knobs_are_refused() {
    let out = scratch("cpu");
    let out = out.to_str().unwrap();
    let output = peerline(&["sim", "steady", "--cpu-backlog", "0", "--out", out]);
    assert_clear_error(&output, "--cpu-backlog must be at least 1");
    let output = peerline(&["sim", "steady", "--cpu-cost-factor", "0", "--out", out]);
    assert_clear_error(&output, "--cpu-cost-factor must be a positive number");
    let output = peerline(&["sim", "steady", "--cpu-model", "fast", "--out", out]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("measured"),
        "the choices are listed"
    );
}

#[test]
fn bad_duration_is_refused() {
    let output = peerline(&["sim", "steady", "--duration", "ten minutes"]);
    assert_clear_error(&output, "not a duration");
}

#[test]
fn unwritable_output_directory_is_refused_before_running() {
    let blocker = scratch("blocker");
    std::fs::write(&blocker, b"a file, not a directory").unwrap();
    let out = blocker.join("out");
    let output = peerline(&[
        "sim",
        "steady",
        "--clients",
        "50",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clear_error(&output, "cannot create output directory");
    let _ = std::fs::remove_file(blocker);
}

/// Runs `peerline sim ARGS --quiet --out OUT`: it must finish with a report
/// (exit 0, or 1 for a missed figure), never fail to run.
fn sim_run(args: &[&str], out: &std::path::Path) -> Output {
    sim_run_with_env(args, out, &[])
}

fn sim_run_with_env(args: &[&str], out: &std::path::Path, env: &[(&str, &str)]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_peerline"))
        .arg("sim")
        .args(args)
        .args(["--quiet", "--out", out.to_str().unwrap()])
        .envs(env.iter().copied())
        .output()
        .expect("the peerline binary runs");
    assert!(
        output.status.code().is_some_and(|c| c == 0 || c == 1),
        "{}",
        stderr(&output)
    );
    output
}

/// A small `steady` run, the one the digest tests compare.
fn small_steady(seed: &str) -> [&str; 9] {
    [
        "steady",
        "--clients",
        "300",
        "--supernodes",
        "10",
        "--duration",
        "4m",
        "--seed",
        seed,
    ]
}

fn read_report(path: PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn digest_of(seed: &str, name: &str) -> String {
    let out = scratch(name);
    sim_run(&small_steady(seed), &out);
    let report = read_report(out.join("report.json"));
    for chart in [
        "attached_clients.svg",
        "supernode_load.svg",
        "lookup_hops.svg",
        "lookup_latency_cdf.svg",
    ] {
        assert!(out.join(chart).exists(), "{chart} missing");
    }
    for key in [
        "scenario",
        "seed",
        "clients",
        "supernodes",
        "virtual_duration_s",
        "wall_s",
        "events",
        "peak_rss_bytes",
        "lookup_success_ratio",
        "lookup_hops_median",
        "lookup_hops_p99",
        "lookup_latency_ms_median",
        "lookup_latency_ms_p99",
        "lookup_fallback_ratio",
        "attached_ratio_min",
        "supernode_load_max_ratio",
        "digest",
    ] {
        assert!(report.get(key).is_some(), "report.json lacks {key}");
    }
    let _ = std::fs::remove_dir_all(out);
    report["digest"].as_str().unwrap().to_string()
}

#[test]
fn same_seed_same_digest_across_processes() {
    let first = digest_of("21", "d1");
    let second = digest_of("21", "d2");
    let other = digest_of("22", "d3");
    assert_eq!(first, second);
    assert_ne!(first, other);
}

/// The profiler (`PEERLINE_SIM_PROFILE=S`) only watches: the same seed
/// gives the same digest with it on, and it prints the table at virtual
/// second S and the one at the end, each naming the handlers it timed.
#[test]
fn profiling_prints_where_the_time_went_and_changes_no_outcome() {
    let plain = digest_of("23", "p1");
    let out = scratch("p2");
    let output = sim_run_with_env(
        &small_steady("23"),
        &out,
        &[("PEERLINE_SIM_PROFILE", "120")],
    );
    let text = stderr(&output);
    assert!(
        text.contains("(profile until virtual second 120)"),
        "{text}"
    );
    assert_eq!(text.matches("s in node handlers").count(), 2, "{text}");
    for handler in [
        "GossipPing",
        "Keepalive",
        "timer (client)",
        "timer (supernode)",
    ] {
        assert!(
            text.contains(handler),
            "the profile lacks {handler}: {text}"
        );
    }
    let profiled = read_report(out.join("report.json"));
    assert_eq!(profiled["digest"].as_str().unwrap(), plain);
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn compare_runs_the_baseline_on_the_same_seed_and_charts_both() {
    let out = scratch("compare");
    sim_run(
        &[
            "supernode-crash",
            "--clients",
            "600",
            "--supernodes",
            "10",
            "--duration",
            "18m",
            "--compare",
        ],
        &out,
    );
    for chart in [
        "compare_attached.svg",
        "compare_load.svg",
        "busy_answers.svg",
        "mailbox_backlog.svg",
        "supernode_load_over_time.svg",
        "naive/report.json",
    ] {
        assert!(out.join(chart).exists(), "{chart} missing");
    }
    let (ours, naive) = (
        read_report(out.join("report.json")),
        read_report(out.join("naive/report.json")),
    );
    assert_eq!(ours["seed"], naive["seed"]);
    assert_eq!(ours["naive"], false);
    assert_eq!(naive["naive"], true);
    for key in [
        "reattach_ratio_within_300s",
        "reattach_s_p99",
        "busy_answers",
        "supernode_over_capacity_events",
        "promotions",
        "messages_sent",
        "messages_delivered",
        "messages_lost",
        "messages_duplicated",
        "messages_out_of_order",
        "mailbox_backlog_max",
        "backlog_drain_s",
    ] {
        assert!(ours.get(key).is_some(), "report lacks {key}");
    }
    let _ = std::fs::remove_dir_all(out);
}

/// The demo runs a real network on loopback and checks its own claims: a
/// smaller one here (5 supernodes, 2 of them killed; 12 clients) to keep
/// the suite short; `peerline demo` runs 8 and 40.
#[test]
fn demo_holds_every_claim_on_a_small_network() {
    let output = peerline(&["demo", "--supernodes", "5", "--clients", "12"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", stderr(&output));
    assert!(!stdout.contains("FAIL"), "{stdout}");
    for claim in [
        "12 clients logged in",
        "lookups found the target's record, naming its current supernodes",
        "lookups after the outage found the target's record",
        "messages delivered once and acknowledged",
        "killed 2 of 5 supernodes",
        "every client attached to 2 live supernodes again",
        "sent during the outage delivered once",
        "0 lost, 0 duplicated",
        "claims hold",
    ] {
        assert!(stdout.contains(claim), "missing {claim:?}:\n{stdout}");
    }
}

#[test]
fn demo_refuses_a_kill_that_leaves_too_few_supernodes() {
    let output = peerline(&["demo", "--supernodes", "3", "--kill-fraction", "0.9"]);
    assert_clear_error(&output, "--kill-fraction must kill at least one supernode");
}

/// The command failed with `code` and said exactly `sentence` (after
/// `error: `), on one line.
fn assert_exit(output: &Output, code: i32, sentence: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(code), "{text}");
    assert_eq!(text.trim_end(), format!("error: {sentence}"), "{text}");
}

#[test]
fn bad_names_are_refused_with_the_rule() {
    let data = scratch("bad-names");
    let data = data.to_str().unwrap();
    let long = "a".repeat(40);
    let cases = [
        ("", "the name is empty".to_string()),
        (
            long.as_str(),
            "the name is 40 characters; a name has at most 32".to_string(),
        ),
        (
            // A Cyrillic а among Latin letters: it would imitate "paypal".
            "p\u{430}ypal",
            "\"p\u{430}ypal\" mixes scripts (e.g. Latin with Cyrillic letters); a name uses one script, so it cannot imitate another".to_string(),
        ),
    ];
    for (name, sentence) in &cases {
        let output = peerline(&["account", "create", name, "--data-dir", data]);
        assert_exit(&output, 2, sentence);
        let output = peerline(&["lookup", name]);
        assert_exit(&output, 2, sentence);
    }
    assert!(
        !std::path::Path::new(data).exists(),
        "nothing is made for a bad name"
    );
}

#[test]
fn whoami_without_an_account_says_how_to_make_one() {
    let data = scratch("whoami-none");
    let output = peerline(&["whoami", "--data-dir", data.to_str().unwrap()]);
    assert_exit(
        &output,
        1,
        &format!(
            "no account in {}; create one with `peerline account create <name>`",
            data.display()
        ),
    );
    assert_exit(
        &peerline(&["whoami"]),
        2,
        "no data directory: give --data-dir DIR (this device's keys live there)",
    );
}

#[test]
fn empty_or_missing_passwords_are_refused_before_anything_is_made() {
    let data = scratch("password");
    let data_arg = data.to_str().unwrap();
    let empty = scratch("empty-password");
    std::fs::write(&empty, "\n").unwrap();
    let empty_arg = empty.to_str().unwrap();
    for command in ["create", "login"] {
        let mut args = match command {
            "create" => vec!["account", "create", "alice"],
            _ => vec!["login", "alice"],
        };
        args.extend(["--data-dir", data_arg]);
        let mut with_file = args.clone();
        with_file.extend(["--password-file", empty_arg]);
        assert_exit(
            &peerline(&with_file),
            2,
            "the password is empty; choose one (it seals the account's root key)",
        );
        // No file, and stdin is no terminal: nothing to ask on.
        assert_exit(
            &peerline(&args),
            2,
            "no password: give --password-file FILE (there is no terminal to ask on)",
        );
    }
    assert!(!data.exists(), "nothing is made");
    let _ = std::fs::remove_file(empty);
}

/// A node key nobody holds, at a loopback port nobody listens on.
fn dead_seed() -> String {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    drop(socket);
    format!("3fa4000000000000000000000000000000000000000000000000000000000001@127.0.0.1:{port}")
}

#[test]
fn an_unreachable_network_is_named_with_what_was_tried() {
    let seed = dead_seed();
    let output = peerline(&["lookup", "alice", "--bootstrap", &seed, "--timeout", "2s"]);
    assert_exit(
        &output,
        3,
        "could not reach the network: no supernode answered within 2 s (tried 1)",
    );
    let data = scratch("unreachable");
    let password = scratch("unreachable-password");
    std::fs::write(&password, "a password").unwrap();
    let password = password.to_str().unwrap();
    let account_create = ["account", "create", "alice", "--password-file", password];
    let login = ["login", "alice", "--password-file", password];
    for command in [&account_create[..], &login[..]] {
        let mut args = command.to_vec();
        let data_arg = data.to_str().unwrap();
        args.extend([
            "--data-dir",
            data_arg,
            "--bootstrap",
            &seed,
            "--timeout",
            "2s",
        ]);
        assert_exit(
            &peerline(&args),
            3,
            "could not reach the network: no supernode answered within 2 s (tried 1)",
        );
        assert!(
            !data.join("state.redb").exists(),
            "no account is written without a name"
        );
    }
    let _ = std::fs::remove_file(password);
    let _ = std::fs::remove_dir_all(data);
    assert_exit(
        &peerline(&["lookup", "alice"]),
        2,
        "no supernode to start from: give --bootstrap NODE_KEY@ADDR (a node prints its own at start), or a --data-dir whose node has run",
    );
}

/// Supernodes of the loopback network: a name quorum (5) and more, and
/// enough for password login: a supernode holds one OPRF share per
/// account, 3 per share index, so 10 hold indices 1–3 three times and
/// index 4 once (login needs 3 indices; 6 supernodes would hold only 2).
const SUPERNODES: usize = 10;
const START_WITHIN: Duration = Duration::from_secs(30);
const SETTLE_WITHIN: Duration = Duration::from_secs(40);
/// A command against the network: attaching, the proof of work, a vote.
const COMMAND_WITHIN: Duration = Duration::from_secs(60);

/// Runs `peerline` with a bound: killed (and the test failed) past `within`.
fn peerline_within(args: &[&str], within: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_peerline"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the peerline binary runs");
    let deadline = Instant::now() + within;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "peerline {args:?} did not finish within {within:?}: {}",
                stderr(&output)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value on the line that starts with `label` (e.g. "account").
fn field(text: &str, label: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix(label))
        .map(|value| value.split_whitespace().next().unwrap_or("").to_string())
}

const NODE_ARGS: [&str; 3] = ["--listen", "127.0.0.1:0", "--loopback-test-network"];

/// Starts `SUPERNODES` supernodes on loopback (the first is node 0) and
/// waits until they all know each other; their NODE_KEY@ADDR seeds.
fn loopback_supernodes(fleet: &mut common::Fleet) -> Vec<String> {
    let mut args = vec!["--role", "supernode"];
    args.extend(NODE_ARGS);
    let first = fleet.start("super-0", &args);
    let seed = fleet.bootstrap_of(first, START_WITHIN);
    let mut supernodes = vec![first];
    for i in 1..SUPERNODES {
        let mut args = vec!["--role", "supernode", "--bootstrap", &seed];
        args.extend(NODE_ARGS);
        supernodes.push(fleet.start(&format!("super-{i}"), &args));
    }
    let mut seeds = vec![seed.clone()];
    for &index in &supernodes[1..] {
        seeds.push(fleet.bootstrap_of(index, START_WITHIN));
    }
    let settled = fleet.wait_until(SETTLE_WITHIN, |nodes| {
        nodes.iter().all(|node| {
            node.status().is_some_and(|status| {
                status["role"] == "supernode"
                    && status["membership_len"].as_u64() == Some(SUPERNODES as u64)
            })
        })
    });
    assert!(settled, "the supernodes did not all know each other");
    seeds
}

/// Runs a command against the loopback network of `seeds`, bounded.
fn on_network(seeds: &[String], command: &[&str], data: Option<&PathBuf>) -> Output {
    let mut args: Vec<&str> = command.to_vec();
    if let Some(data) = data {
        args.extend(["--data-dir", data.to_str().unwrap()]);
    }
    args.extend(["--loopback-test-network", "--timeout", "20s", "--bootstrap"]);
    args.extend(seeds.iter().map(String::as_str));
    peerline_within(&args, COMMAND_WITHIN)
}

#[test]
fn an_account_is_created_its_name_is_taken_once_and_looked_up() {
    let mut fleet = common::Fleet::new("accounts");
    let node_args = NODE_ARGS;
    let seeds = loopback_supernodes(&mut fleet);
    let (first, seed) = (0, seeds[0].clone());

    // A running node holds its data directory: said, exit 3.
    let held = fleet.nodes[first].data_dir.clone();
    let pid = fleet.nodes[first].child.id();
    assert_exit(
        &peerline(&["whoami", "--data-dir", held.to_str().unwrap()]),
        3,
        &format!(
            "the data directory {} is in use by a running peerline node (process {pid}); stop it first, or give another --data-dir",
            held.display()
        ),
    );

    let network = |command: &[&str], data: Option<&PathBuf>| on_network(&seeds, command, data);
    let alice = fleet.dir.join("alice");
    let password = fleet.dir.join("alice-password");
    std::fs::write(&password, "correct horse battery staple\n").unwrap();
    let password_arg = password.to_str().unwrap();
    let created = network(
        &[
            "account",
            "create",
            "Alice",
            "--password-file",
            password_arg,
        ],
        Some(&alice),
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let text = stdout(&created);
    assert!(text.contains("registered alice"), "{text}");
    assert!(text.contains("password set"), "{text}");
    let account = field(&text, "account").expect("the account key is printed");
    assert_eq!(account.len(), 64, "{text}");

    let whoami = peerline(&["whoami", "--data-dir", alice.to_str().unwrap()]);
    assert!(whoami.status.success(), "{}", stderr(&whoami));
    let text = stdout(&whoami);
    assert_eq!(field(&text, "account").as_deref(), Some(account.as_str()));
    assert_eq!(field(&text, "names").as_deref(), Some("alice"), "{text}");

    let again = network(
        &["account", "create", "alice", "--no-password"],
        Some(&alice),
    );
    assert_exit(
        &again,
        1,
        &format!(
            "{} already holds the account named alice; give another --data-dir for a new account",
            alice.display()
        ),
    );

    let mallory = fleet.dir.join("mallory");
    let taken = network(
        &["account", "create", "alice", "--no-password"],
        Some(&mallory),
    );
    assert_exit(
        &taken,
        1,
        &format!("the name alice is taken (by account {account}); choose another"),
    );
    assert!(
        !mallory.join("state.redb").exists(),
        "a refused name writes no account"
    );

    let found = network(&["lookup", "alice"], None);
    assert!(found.status.success(), "{}", stderr(&found));
    assert_eq!(
        field(&stdout(&found), "account").as_deref(),
        Some(account.as_str())
    );
    // A directory `peerline node` made holds a nameless account (its root
    // key dropped): `account create` replaces it with one that has a name.
    let client_args = ["--role", "client", "--bootstrap", &seed];
    let mut args = client_args.to_vec();
    args.extend(node_args);
    let client = fleet.start("client", &args);
    fleet.bootstrap_of(client, START_WITHIN);
    let carol = fleet.nodes[client].data_dir.clone();
    assert!(fleet.nodes[client].terminate(START_WITHIN).is_some());
    let created = network(
        &["account", "create", "carol", "--no-password"],
        Some(&carol),
    );
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(
        stdout(&created).contains("replaced   the nameless account"),
        "{}",
        stdout(&created)
    );
    let whoami = peerline(&["whoami", "--data-dir", carol.to_str().unwrap()]);
    assert_eq!(field(&stdout(&whoami), "names").as_deref(), Some("carol"));

    let nobody = network(&["lookup", "bob"], Some(&alice));
    assert_eq!(nobody.status.code(), Some(1), "{}", stderr(&nobody));
    assert_eq!(stdout(&nobody).trim(), "nobody has registered bob");

    logins_on_new_devices(&fleet, &network, &alice, &account, password_arg);
    devices_and_a_password_change(&fleet, &network);
    a_root_rotation_moves_the_account_and_its_name(&fleet, &network);
}

/// erin rotates her root key: the name follows to the new account, her
/// laptop holds a certificate of the new key, and a new device logs in
/// with the new password to the new account.
fn a_root_rotation_moves_the_account_and_its_name(
    fleet: &common::Fleet,
    network: &dyn Fn(&[&str], Option<&PathBuf>) -> Output,
) {
    let laptop = fleet.dir.join("erin");
    let (old, new) = (fleet.dir.join("erin-old"), fleet.dir.join("erin-new"));
    std::fs::write(&old, "erin before\n").unwrap();
    std::fs::write(&new, "erin after\n").unwrap();
    let (old, new) = (old.to_str().unwrap(), new.to_str().unwrap());
    let created = network(
        &["account", "create", "erin", "--password-file", old],
        Some(&laptop),
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let first = field(&stdout(&created), "account").unwrap();
    let device = field(&stdout(&created), "device").unwrap();
    // alice knows erin by her first key.
    let alice = fleet.dir.join("alice");
    let added = network(&["contacts", "add", "erin"], Some(&alice));
    assert!(added.status.success(), "{}", stderr(&added));
    let rotated = network(
        &[
            "account",
            "rotate",
            "--password-file",
            old,
            "--new-password-file",
            new,
        ],
        Some(&laptop),
    );
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let second = field(&stdout(&rotated), "account").unwrap();
    assert_eq!(
        field(&stdout(&rotated), "old").as_deref(),
        Some(first.as_str())
    );
    assert_ne!(first, second);
    // The laptop keeps its device key, now certified by the new root.
    let whoami = stdout(&peerline(&[
        "whoami",
        "--data-dir",
        laptop.to_str().unwrap(),
    ]));
    assert_eq!(field(&whoami, "account").as_deref(), Some(second.as_str()));
    assert_eq!(field(&whoami, "device").as_deref(), Some(device.as_str()));
    assert_eq!(field(&whoami, "names").as_deref(), Some("erin"));
    // Lookups follow the rotation.
    let found = stdout(&network(&["lookup", "erin"], None));
    assert_eq!(
        field(&found, "account").as_deref(),
        Some(second.as_str()),
        "{found}"
    );
    assert_eq!(field(&found, "moved").as_deref(), Some("from"), "{found}");
    assert!(found.contains(&first), "{found}");
    // The laptop still works on the network (its device list is the new
    // account's), and a new device logs in to the new account.
    let list = network(&["devices", "list"], Some(&laptop));
    assert!(list.status.success(), "{}", stderr(&list));
    assert_eq!(listed(&stdout(&list), "current  "), vec![device.clone()]);
    let phone = fleet.dir.join("erin-phone");
    let login = network(&["login", "erin", "--password-file", new], Some(&phone));
    assert!(login.status.success(), "{}", stderr(&login));
    assert_eq!(
        field(&stdout(&login), "account").as_deref(),
        Some(second.as_str())
    );
    let other = fleet.dir.join("erin-other");
    let login = network(&["login", "erin", "--password-file", old], Some(&other));
    assert_exit(&login, 1, "wrong password for erin");
    // alice's contact follows when she refreshes.
    let refreshed = stdout(&network(&["contacts", "refresh"], Some(&alice)));
    assert!(
        refreshed.contains(&format!("moved    erin from {first} to {second}")),
        "{refreshed}"
    );
    assert!(refreshed.ends_with("1 moved\n"), "{refreshed}");

    // erin's contacts: added by name over the network, listed and removed
    // from the data directory.
    let local = |command: &[&str]| {
        let mut args = command.to_vec();
        args.extend(["--data-dir", laptop.to_str().unwrap()]);
        peerline(&args)
    };
    let added = network(&["contacts", "add", "Dave"], Some(&laptop));
    assert!(added.status.success(), "{}", stderr(&added));
    assert!(
        stdout(&added).starts_with("added    dave (account "),
        "{}",
        stdout(&added)
    );
    assert_exit(
        &network(&["contacts", "add", "erin"], Some(&laptop)),
        1,
        "erin is this account's own name",
    );
    assert_exit(
        &network(&["contacts", "add", "nobody"], Some(&laptop)),
        1,
        "nobody has registered nobody",
    );
    let listed = stdout(&local(&["contacts", "list"]));
    assert!(listed.starts_with("dave "), "{listed}");
    assert!(stdout(&local(&["contacts", "remove", "dave"])).starts_with("removed  dave"));
    assert_exit(
        &local(&["contacts", "remove", "dave"]),
        1,
        "there is no contact named dave",
    );
}

/// The keys `devices list` prints on its `label` lines.
fn listed(text: &str, label: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix(label))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// dave makes an account, logs in on a phone, lists both devices, revokes
/// the phone, and changes the password: the new one opens the key, the
/// old one no longer does. Five password uses: the holders' burst.
fn devices_and_a_password_change(
    fleet: &common::Fleet,
    network: &dyn Fn(&[&str], Option<&PathBuf>) -> Output,
) {
    let (laptop, phone) = (fleet.dir.join("dave"), fleet.dir.join("dave-phone"));
    let (old, new) = (fleet.dir.join("dave-old"), fleet.dir.join("dave-new"));
    std::fs::write(&old, "old dave secret\n").unwrap();
    std::fs::write(&new, "new dave secret\n").unwrap();
    let (old, new) = (old.to_str().unwrap(), new.to_str().unwrap());
    let created = network(
        &["account", "create", "dave", "--password-file", old],
        Some(&laptop),
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let laptop_key = field(&stdout(&created), "device").unwrap();
    let login = network(&["login", "dave", "--password-file", old], Some(&phone));
    assert!(login.status.success(), "{}", stderr(&login));
    let phone_key = field(&stdout(&login), "device").unwrap();

    // Both devices are current, whichever device asks.
    for dir in [&laptop, &phone] {
        let list = network(&["devices", "list"], Some(dir));
        assert!(list.status.success(), "{}", stderr(&list));
        let text = stdout(&list);
        let mut current = listed(&text, "current  ");
        current.sort();
        let mut expected = vec![laptop_key.clone(), phone_key.clone()];
        expected.sort();
        assert_eq!(current, expected, "{text}");
        assert!(listed(&text, "revoked  ").is_empty(), "{text}");
        assert_eq!(field(&text, "version").as_deref(), Some("2"), "{text}");
    }
    // Bad device names are refused before the password is used.
    let revoke = |device: &str, dir: &PathBuf| {
        network(
            &["devices", "revoke", device, "--password-file", old],
            Some(dir),
        )
    };
    assert_exit(
        &revoke("xyz", &laptop),
        2,
        "\"xyz\" is not a device key: give the key as `peerline devices list` prints it, or at least 8 of its first hex digits",
    );
    assert_exit(
        &revoke(&laptop_key[..12], &laptop),
        2,
        "that is this device: revoke it from another of the account's devices (or log in on one first)",
    );
    let unknown = "0123456789abcdef";
    let unknown = if phone_key.starts_with(unknown) || laptop_key.starts_with(unknown) {
        "fedcba9876543210"
    } else {
        unknown
    };
    assert_exit(
        &revoke(unknown, &laptop),
        1,
        &format!(
            "no current device of the account starts with {unknown}; see `peerline devices list`"
        ),
    );
    // The laptop revokes the phone.
    let revoked = revoke(&phone_key[..10], &laptop);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    assert_eq!(
        field(&stdout(&revoked), "revoked").as_deref(),
        Some(phone_key.as_str())
    );
    let text = stdout(&network(&["devices", "list"], Some(&laptop)));
    assert_eq!(
        listed(&text, "current  "),
        vec![laptop_key.clone()],
        "{text}"
    );
    assert_eq!(
        listed(&text, "revoked  "),
        vec![phone_key.clone()],
        "{text}"
    );
    // The revoked phone is refused by the network, and told why.
    let refused = network(&["devices", "list"], Some(&phone));
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).starts_with("error: the network refused this device: the account revoked this device; `peerline login <name>` with another --data-dir makes it a new device (said by "),
        "{}",
        stderr(&refused)
    );

    // A new password: it opens the key on a new device, the old one no longer.
    let same = network(
        &["passwd", "--password-file", old, "--new-password-file", old],
        Some(&laptop),
    );
    assert_exit(&same, 2, "the new password is the old one; choose another");
    let changed = network(
        &["passwd", "--password-file", old, "--new-password-file", new],
        Some(&laptop),
    );
    assert!(changed.status.success(), "{}", stderr(&changed));
    assert!(
        stdout(&changed).starts_with("password changed for dave"),
        "{}",
        stdout(&changed)
    );
    let tablet = fleet.dir.join("dave-tablet");
    let login = network(&["login", "dave", "--password-file", new], Some(&tablet));
    assert!(login.status.success(), "{}", stderr(&login));
    let other = fleet.dir.join("dave-other");
    let login = network(&["login", "dave", "--password-file", old], Some(&other));
    assert_exit(&login, 1, "wrong password for dave");
}

/// Wrong guesses after which the holders must have refused (their burst
/// is 5 per account; two guesses were spent before).
const GUESSES_UNTIL_REFUSED_MAX: usize = 6;

/// `peerline login` against the network of the test above, where alice was
/// created with `password_file` (and carol without a password).
fn logins_on_new_devices(
    fleet: &common::Fleet,
    network: &dyn Fn(&[&str], Option<&PathBuf>) -> Output,
    alice: &std::path::Path,
    account: &str,
    password_file: &str,
) {
    let phone = fleet.dir.join("alice-phone");
    let login = network(
        &["login", "alice", "--password-file", password_file],
        Some(&phone),
    );
    assert!(login.status.success(), "{}", stderr(&login));
    let text = stdout(&login);
    assert!(
        text.starts_with("logged in as alice on a new device ("),
        "{text}"
    );
    assert!(text.contains("round trips"), "the time it took: {text}");
    let on_phone = stdout(&peerline(&[
        "whoami",
        "--data-dir",
        phone.to_str().unwrap(),
    ]));
    let on_laptop = stdout(&peerline(&[
        "whoami",
        "--data-dir",
        alice.to_str().unwrap(),
    ]));
    assert_eq!(field(&on_phone, "account").as_deref(), Some(account));
    assert_eq!(field(&on_phone, "names").as_deref(), Some("alice"));
    let phone_device = field(&on_phone, "device").expect("a device key");
    assert_eq!(phone_device.len(), 64, "{on_phone}");
    assert_ne!(Some(phone_device), field(&on_laptop, "device"));

    let wrong = fleet.dir.join("wrong-password");
    std::fs::write(&wrong, "Tr0ub4dor&3").unwrap();
    let elsewhere = fleet.dir.join("alice-tablet");
    let login = network(
        &["login", "alice", "--password-file", wrong.to_str().unwrap()],
        Some(&elsewhere),
    );
    assert_exit(&login, 1, "wrong password for alice");
    assert!(
        !elsewhere.join("state.redb").exists(),
        "a failed login writes no account"
    );
    let login = network(
        &["login", "nobody", "--password-file", password_file],
        Some(&elsewhere),
    );
    assert_exit(&login, 1, "nobody has registered nobody");
    let login = network(
        &["login", "alice", "--password-file", password_file],
        Some(&phone),
    );
    assert_exit(
        &login,
        1,
        &format!(
            "{} already holds the account named alice; give another --data-dir for a new account",
            phone.display()
        ),
    );
    // Guessing: each holder allows an account 5 evaluations at once
    // (`GUESS_BURST`; alice spent 2 above), then refuses for minutes.
    let mut refused = None;
    for _ in 0..GUESSES_UNTIL_REFUSED_MAX {
        let login = network(
            &["login", "alice", "--password-file", wrong.to_str().unwrap()],
            Some(&elsewhere),
        );
        if login.status.code() == Some(3) {
            refused = Some(stderr(&login));
            break;
        }
        assert_exit(&login, 1, "wrong password for alice");
    }
    let refused = refused.expect("the holders refused more guesses");
    let sentence = refused.trim_end();
    assert!(
        sentence.starts_with("error: too many password attempts for alice; try again in ")
            && (sentence.ends_with(" minutes") || sentence.ends_with(" 1 minute")),
        "{refused}"
    );
    // carol kept no password: there is nothing to open.
    let login = network(
        &["login", "carol", "--password-file", password_file],
        Some(&elsewhere),
    );
    assert_eq!(login.status.code(), Some(3), "{}", stderr(&login));
    assert!(
        stderr(&login).contains("holds no password-sealed key for carol"),
        "{}",
        stderr(&login)
    );
}

/// The numbers in `peerline login`'s "took" line, in order: total, attach,
/// name lookup, opening the key, its network part, round trips, saving,
/// then stopping the client.
fn login_figures(text: &str) -> Vec<u64> {
    let line = text
        .lines()
        .find(|line| line.starts_with("took"))
        .expect("a took line");
    line.split_whitespace()
        .filter_map(|word| word.trim_matches([':', ',', '(', ')']).parse().ok())
        .collect()
}

/// p50 and p99 by nearest rank (p99 of 20 samples is the largest).
fn percentiles(mut samples: Vec<u64>) -> (u64, u64) {
    samples.sort_unstable();
    let rank = |p: f64| {
        let index = (p * samples.len() as f64).ceil() as usize;
        samples[index.clamp(1, samples.len()) - 1]
    };
    (rank(0.50), rank(0.99))
}

/// Password login on a new device over loopback QUIC, measured: 20 logins,
/// each a fresh `peerline login` process and data directory, against 10
/// supernodes (`peerline node --loopback-test-network`), the bundles sealed
/// at the production Argon2id cost (64 MiB, 3 passes, 1 lane). 5 accounts
/// with 4 logins each: every login spends one guess at each holder asked,
/// and a holder allows 5 at once per account (`GUESS_BURST`).
///
/// `cargo test -p peerline --test cli -- --ignored --nocapture password_login_is_measured`
#[test]
#[ignore = "a measurement (about a minute): prints figures, asserts only that logins succeed"]
fn password_login_is_measured() {
    const ACCOUNTS: usize = 5;
    const LOGINS_PER_ACCOUNT: usize = 4;
    let mut fleet = common::Fleet::new("login-measure");
    let seeds = loopback_supernodes(&mut fleet);
    let password = fleet.dir.join("password");
    std::fs::write(&password, "correct horse battery staple").unwrap();
    let password = password.to_str().unwrap();
    let names: Vec<String> = (0..ACCOUNTS).map(|i| format!("measured{i}")).collect();
    for name in &names {
        let home = fleet.dir.join(name);
        let created = on_network(
            &seeds,
            &["account", "create", name, "--password-file", password],
            Some(&home),
        );
        assert!(created.status.success(), "{}", stderr(&created));
    }
    let (mut process_ms, mut took_ms, mut open_ms, mut network_ms) =
        (vec![], vec![], vec![], vec![]);
    let (mut attach_ms, mut lookup_ms, mut round_trips) = (vec![], vec![], vec![]);
    let (mut stop_ms, mut save_ms) = (vec![], vec![]);
    for round in 0..LOGINS_PER_ACCOUNT {
        for name in &names {
            let device = fleet.dir.join(format!("{name}-device-{round}"));
            let started = Instant::now();
            let login = on_network(
                &seeds,
                &["login", name, "--password-file", password],
                Some(&device),
            );
            process_ms.push(started.elapsed().as_millis() as u64);
            assert!(login.status.success(), "{}", stderr(&login));
            let figures = login_figures(&stdout(&login));
            assert_eq!(figures.len(), 8, "{}", stdout(&login));
            took_ms.push(figures[0]);
            attach_ms.push(figures[1]);
            lookup_ms.push(figures[2]);
            open_ms.push(figures[3]);
            network_ms.push(figures[4]);
            round_trips.push(figures[5]);
            save_ms.push(figures[6]);
            stop_ms.push(figures[7]);
        }
    }
    let logins = process_ms.len();
    println!("password login on a new device, loopback, {SUPERNODES} supernodes, {logins} logins, Argon2id 64 MiB x 3 passes x 1 lane:");
    for (what, samples) in [
        ("whole `peerline login` process", process_ms),
        ("time to logged in (the command's own count)", took_ms),
        ("attaching to a supernode", attach_ms),
        ("looking the name up", lookup_ms),
        ("opening the key (fetch + OPRF + Argon2id)", open_ms),
        ("its network part (the core's elapsed_ms)", network_ms),
        ("certifying the device and saving the store", save_ms),
        (
            "then stopping the client (re-dealt shares out, goodbyes)",
            stop_ms,
        ),
    ] {
        let (p50, p99) = percentiles(samples);
        println!("  {what}: p50 {p50} ms, p99 {p99} ms");
    }
    let (p50, p99) = percentiles(round_trips);
    println!("  round trips: p50 {p50}, p99 {p99}");
}
