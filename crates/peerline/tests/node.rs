//! `peerline node` as an operator meets it: bad settings and bad data
//! directories get one clear sentence and exit 2; the identity is made once
//! (in `state.redb`, mode 0600) and kept, an old `identity.key` moved into
//! it without its root key; SIGTERM stops the node with exit 0 and a saved host
//! cache, from which it bootstraps alone after a restart.

mod common;

use common::{assert_clear_error, attached, damage_host_cache, peerline, saved_host_keys, Fleet};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const START_WITHIN: Duration = Duration::from_secs(20);
const STOP_WITHIN: Duration = Duration::from_secs(10);
const ATTACH_WITHIN: Duration = Duration::from_secs(20);

const KEY: &str = "3fa4000000000000000000000000000000000000000000000000000000000001";

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("peerline-node-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn bad_config_files_are_named_with_the_line() {
    let dir = scratch("config");
    let config = dir.join("node.toml");
    let data = dir.join("data");
    let cases = [
        (
            "listen = \"127.0.0.1:0\"\nlisten_port = 4433\n",
            "line 2: unknown field `listen_port`",
        ),
        ("role = \"boss\"\n", "line 1: unknown variant `boss`"),
        ("bootstrap = [\"nobody@nowhere\"]\n", "is not a node key"),
        ("listen = [\n", "line "),
    ];
    for (text, needle) in cases {
        std::fs::write(&config, text).unwrap();
        let output = peerline(&[
            "node",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        assert_clear_error(&output, needle);
        assert!(
            common::stderr(&output).contains("node.toml"),
            "the file is named"
        );
    }
    let output = peerline(&[
        "node",
        "--config",
        dir.join("absent.toml").to_str().unwrap(),
    ]);
    assert_clear_error(&output, "cannot read the config file");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_flags_are_named() {
    let dir = scratch("flags");
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let output = peerline(&["node", "--data-dir", data, "--bootstrap", "abc@127.0.0.1:1"]);
    assert_clear_error(&output, "is not a node key");
    let seed = format!("{KEY}@0.0.0.0:4433");
    let output = peerline(&["node", "--data-dir", data, "--bootstrap", &seed]);
    assert_clear_error(&output, "cannot be dialed");
    let output = peerline(&["node", "--listen", "127.0.0.1:0"]);
    assert_clear_error(&output, "no data directory");
    let output = peerline(&[
        "node",
        "--data-dir",
        data,
        "--log-level",
        "peerline=loudest",
    ]);
    assert_clear_error(&output, "log level");
    // A client with nothing to start from would wait forever: refused.
    // On a loopback address LAN discovery does not run (and a test in the
    // machine's own namespace must never start it, nor port mapping).
    let output = peerline(&[
        "node",
        "--data-dir",
        data,
        "--role",
        "client",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_clear_error(&output, "no supernode to start from");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_taken_port_is_named() {
    let dir = scratch("port");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = peerline(&[
        "node",
        "--role",
        "supernode",
        "--fast-timers",
        "--listen",
        &addr,
        "--data-dir",
        dir.join("data").to_str().unwrap(),
    ]);
    assert_clear_error(&output, &format!("UDP {addr} is already in use"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unusable_data_dirs_and_damaged_identities_are_named() {
    let dir = scratch("datadir");
    let file = dir.join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let run = |data: &std::path::Path| {
        peerline(&[
            "node",
            "--role",
            "supernode",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ])
    };
    assert_clear_error(&run(&file), "is not a directory");
    assert_clear_error(
        &run(&file.join("below")),
        "cannot create the data directory",
    );

    let locked = dir.join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads any directory whatever its mode: then there is nothing to test.
    if std::fs::read_dir(&locked).is_err() {
        assert_clear_error(&run(&locked), "cannot read the data directory");
    }
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();

    let damaged = dir.join("damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    std::fs::write(damaged.join("identity.key"), "device_secret_key = \"12\"\n").unwrap();
    assert_clear_error(&run(&damaged), "is damaged");

    let damaged_state = dir.join("damaged-state");
    std::fs::create_dir_all(&damaged_state).unwrap();
    std::fs::write(damaged_state.join("state.redb"), "garbage".repeat(1_000)).unwrap();
    assert_clear_error(
        &run(&damaged_state),
        &format!(
            "the state database {} is damaged",
            damaged_state.join("state.redb").display()
        ),
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn identity_is_created_0600_and_kept_across_restarts() {
    let mut fleet = Fleet::new("identity");
    let args = [
        "--role",
        "supernode",
        "--listen",
        "127.0.0.1:0",
        "--fast-timers",
    ];
    let first = fleet.start("seed", &args);
    let printed = fleet.bootstrap_of(first, START_WITHIN);
    let key = fleet.nodes[first].key().to_string();
    assert_eq!(key.len(), 64);
    let state = fleet.nodes[first].data_dir.join("state.redb");
    let mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "state database mode {:o}",
        mode & 0o777
    );
    assert!(!fleet.nodes[first].data_dir.join("identity.key").exists());

    let status = fleet.nodes[first].terminate(STOP_WITHIN);
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM: {status:?}; log:\n{}",
        fleet.nodes[first].log()
    );
    let log = fleet.nodes[first].log();
    assert!(log.contains("SIGTERM"), "{log}");
    let last = fleet.nodes[first].status().expect("a last status");
    assert_eq!(last["running"], false);

    let data_dir = fleet.nodes[first].data_dir.clone();
    let again = fleet.start_in("seed-again", &data_dir, &args);
    fleet.bootstrap_of(again, START_WITHIN);
    assert_eq!(
        fleet.nodes[again].key(),
        key,
        "same identity after a restart"
    );
    assert_ne!(
        fleet.nodes[again].bootstrap.as_deref(),
        Some(printed.as_str()),
        "a new port (127.0.0.1:0), the same key"
    );
}

#[test]
fn an_identity_key_is_moved_into_the_state_database_and_its_root_key_dropped() {
    use peerline_core::{CryptoMode, Keypair};
    let hex = |seed: [u8; 32]| -> String {
        Keypair::from_seed(CryptoMode::Full, seed)
            .public()
            .0
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    };
    let (device_seed, account_seed) = ([0x11u8; 32], [0x22u8; 32]);
    let mut fleet = Fleet::new("migrate");
    let data_dir = fleet.dir.join("old");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(
        data_dir.join("identity.key"),
        format!(
            "device_secret_key = \"{}\"\naccount_secret_key = \"{}\"\n",
            "11".repeat(32),
            "22".repeat(32)
        ),
    )
    .unwrap();
    let args = [
        "--role",
        "supernode",
        "--listen",
        "127.0.0.1:0",
        "--fast-timers",
    ];
    let messaging = format!("{}:{}", hex(device_seed), hex(account_seed));
    let first = fleet.start_in("old", &data_dir, &args);
    fleet.bootstrap_of(first, START_WITHIN);
    assert_eq!(fleet.nodes[first].messaging.as_deref(), Some(&*messaging));
    assert!(!data_dir.join("identity.key").exists());
    let log = fleet.nodes[first].log();
    assert!(
        log.contains("the account's root key is no longer kept on this device"),
        "{log}"
    );
    let state = std::fs::read(data_dir.join("state.redb")).unwrap();
    assert!(
        !state.windows(32).any(|window| window == account_seed),
        "the root key is not in state.redb"
    );
    assert_eq!(
        fleet.nodes[first]
            .terminate(STOP_WITHIN)
            .map(|s| s.success()),
        Some(true)
    );

    let again = fleet.start_in("old-again", &data_dir, &args);
    fleet.bootstrap_of(again, START_WITHIN);
    assert_eq!(fleet.nodes[again].messaging.as_deref(), Some(&*messaging));
}

#[test]
fn a_client_saves_its_host_cache_and_restarts_from_it_alone() {
    let mut fleet = Fleet::new("hostcache");
    let fast = ["--listen", "127.0.0.1:0", "--fast-timers"];
    let mut supernodes = Vec::new();
    let mut seeds: Vec<String> = Vec::new();
    for i in 0..2 {
        let mut args = vec!["--role", "supernode"];
        args.extend(fast);
        if let Some(first) = seeds.first() {
            args.extend(["--bootstrap", first.as_str()]);
        }
        let index = fleet.start(&format!("super-{i}"), &args);
        seeds.push(fleet.bootstrap_of(index, START_WITHIN));
        supernodes.push(index);
    }
    let mut args = vec!["--role", "client"];
    args.extend(fast);
    args.push("--bootstrap");
    args.extend(seeds.iter().map(String::as_str));
    let client = fleet.start("client", &args);
    fleet.bootstrap_of(client, START_WITHIN);
    let at_two = |fleet: &mut Fleet, index: usize| {
        fleet.wait_until(ATTACH_WITHIN, |nodes| {
            nodes[index]
                .status()
                .is_some_and(|s| attached(&s).len() == 2 && s["running"] == true)
        })
    };
    assert!(at_two(&mut fleet, client), "{}", fleet.nodes[client].log());
    assert_eq!(
        fleet.nodes[client]
            .terminate(STOP_WITHIN)
            .map(|s| s.success()),
        Some(true)
    );
    let saved = saved_host_keys(&fleet.nodes[client].data_dir);
    for &index in &supernodes {
        let key = fleet.nodes[index].key().to_string();
        assert!(saved.contains(&key), "{key} missing from {saved:?}");
    }

    // No --bootstrap: the saved host cache is all it has.
    let data_dir = fleet.nodes[client].data_dir.clone();
    let mut args = vec!["--role", "client"];
    args.extend(fast);
    let again = fleet.start_in("client-again", &data_dir, &args);
    fleet.bootstrap_of(again, START_WITHIN);
    assert!(at_two(&mut fleet, again), "{}", fleet.nodes[again].log());
    assert!(fleet.nodes[again].log().contains("2 from the host cache"));

    // A damaged host cache: a warning, then the seeds.
    let _ = fleet.nodes[again].terminate(STOP_WITHIN);
    damage_host_cache(&data_dir);
    let mut args = vec!["--role", "client"];
    args.extend(fast);
    args.extend(["--bootstrap", seeds[0].as_str()]);
    let third = fleet.start_in("client-third", &data_dir, &args);
    fleet.bootstrap_of(third, START_WITHIN);
    assert!(at_two(&mut fleet, third), "{}", fleet.nodes[third].log());
    let log = fleet.nodes[third].log();
    assert!(
        log.contains("of the host cache in") && log.contains("ignoring "),
        "{log}"
    );
}

#[test]
fn a_supernode_rejoins_through_saved_members_when_its_seed_is_gone() {
    let mut fleet = Fleet::new("rejoin");
    let fast = [
        "--role",
        "supernode",
        "--listen",
        "127.0.0.1:0",
        "--fast-timers",
    ];
    let seed_index = fleet.start("seed", &fast);
    let seed = fleet.bootstrap_of(seed_index, START_WITHIN);
    let mut args = fast.to_vec();
    args.extend(["--bootstrap", seed.as_str()]);
    let other = fleet.start("other", &args);
    let other_key = {
        fleet.bootstrap_of(other, START_WITHIN);
        fleet.nodes[other].key().to_string()
    };
    let leaver = fleet.start("leaver", &args);
    fleet.bootstrap_of(leaver, START_WITHIN);
    let knows = |fleet: &mut Fleet, index: usize, members: u64| {
        fleet.wait_until(ATTACH_WITHIN, |nodes| {
            nodes[index].status().is_some_and(|s| {
                s["running"] == true && s["membership_len"].as_u64().unwrap_or(0) >= members
            })
        })
    };
    assert!(
        knows(&mut fleet, leaver, 3),
        "{}",
        fleet.nodes[leaver].log()
    );
    assert_eq!(
        fleet.nodes[leaver]
            .terminate(STOP_WITHIN)
            .map(|s| s.success()),
        Some(true)
    );
    let data_dir = fleet.nodes[leaver].data_dir.clone();
    let saved = saved_host_keys(&data_dir);
    assert!(
        saved.contains(&other_key),
        "a member it was never told of is saved: {saved:?}"
    );

    // The only seed dies; the restart has no --bootstrap, only what it saved.
    fleet.nodes[seed_index].kill();
    let again = fleet.start_in("leaver-again", &data_dir, &fast);
    fleet.bootstrap_of(again, START_WITHIN);
    assert!(
        knows(&mut fleet, again, 2),
        "did not rejoin: {}",
        fleet.nodes[again].log()
    );
}
