//! A small, fast version of the `accounts` scenario (issue #5): contested
//! name registrations through churn, a partition, a supernode crash wave
//! and an equivocating attacker in one /24, and device revocations —
//! judged by the report's own figure checks, with full Ed25519 crypto.

use peerline_core::CryptoMode;
use peerline_sim::{Scenario, SimConfig};

#[test]
fn contested_names_end_with_one_owner_everywhere_revocations_spread_and_no_bundle_is_lost() {
    let mut config = SimConfig::new(Scenario::Accounts, 300, 24, 31);
    config.crypto = CryptoMode::Full;
    // The scenario's timeline, shortened: clients up by ~6 minutes, the
    // split at 8 minutes for 4, the crash wave 2 minutes after the heal,
    // contests until 7 minutes before the end (past the 300 s vote hold).
    config.duration_s = 1_800;
    config.join_ramp_s = 120;
    config.storm_at_s = 480;
    config.partition_s = 240;
    config.accounts_crash_after_heal_s = 120;
    config.names_stop_before_end_s = 420;
    config.names_check_before_end_s = 120;
    config.contests_per_min = 20.0;
    config.revocations_per_min = 4.0;
    config.attackers = 4;
    config.bundle_publishes_per_min = 6.0;
    config.bundle_logins_per_min = 12.0;
    let (world, report) = peerline_sim::run(config, &mut |_| {});
    println!("{}", report.summary());
    for line in world.lost_bundles().iter().chain(&world.name_conflicts()) {
        println!("{line}");
    }
    for check in &report.checks {
        assert!(
            check.ok,
            "{} = {} (want {})",
            check.name, check.value, check.bound
        );
    }
    let names = &report.names;
    assert!(names.names_contested >= 150, "{}", names.names_contested);
    assert!(names.names_targeted > 0);
    assert!(names.revocations >= 20, "{}", names.revocations);
    // The partition made both sides certify some names; the rule settled them.
    assert!(names.names_double_certified > 0);
    let bundles = &report.bundles;
    assert!(bundles.key_bundles_simulated);
    assert_eq!(bundles.key_bundles_lost, 0);
    assert!(
        bundles.key_bundles_published >= 50,
        "{}",
        bundles.key_bundles_published
    );
    assert!(
        bundles.bundle_logins_ok >= 100,
        "{}",
        bundles.bundle_logins_ok
    );
    assert!(bundles.bundle_logins_wrong_password_refused >= 10);
    assert!(report
        .sim_overrides
        .iter()
        .any(|(name, _)| name == "bundle_kdf"));
}
