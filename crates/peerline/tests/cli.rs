//! The `peerline` command as a user meets it: clear errors for bad input,
//! and the same digest from the same seed in separate processes.

use std::path::PathBuf;
use std::process::{Command, Output};

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
fn sim_run(args: &[&str], out: &std::path::Path) {
    let mut all = vec!["sim"];
    all.extend_from_slice(args);
    all.extend(["--quiet", "--out", out.to_str().unwrap()]);
    let output = peerline(&all);
    assert!(
        output.status.code().is_some_and(|c| c == 0 || c == 1),
        "{}",
        stderr(&output)
    );
}

fn read_report(path: PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn digest_of(seed: &str, name: &str) -> String {
    let out = scratch(name);
    sim_run(
        &[
            "steady",
            "--clients",
            "300",
            "--supernodes",
            "10",
            "--duration",
            "4m",
            "--seed",
            seed,
        ],
        &out,
    );
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
