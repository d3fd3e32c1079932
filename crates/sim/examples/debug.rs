//! Runs a scenario and prints the clients below two attachments at the end:
//! `cargo run --release -p peerline-sim --example debug -- CLIENTS SUPERNODES SEED DURATION_S [SCENARIO]`
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| -> u64 { args[i].parse().expect("a number") };
    let scenario = args
        .get(4)
        .map(|name| peerline_sim::Scenario::parse(name).expect("a scenario name"))
        .unwrap_or(peerline_sim::Scenario::Steady);
    let mut config =
        peerline_sim::SimConfig::new(scenario, number(0) as u32, number(1) as u32, number(2));
    config.duration_s = number(3);
    if let Some(crypto) = args.get(5) {
        config.crypto = if crypto == "full" {
            peerline_core::CryptoMode::Full
        } else {
            peerline_core::CryptoMode::Modelled
        };
    }
    // PEERLINE_SIM_NO_BUNDLES: the accounts scenario without its key
    // bundles (replays a run from before they were part of it).
    if std::env::var_os("PEERLINE_SIM_NO_BUNDLES").is_some() {
        config.bundle_publishes_per_min = 0.0;
        config.bundle_logins_per_min = 0.0;
    }
    let (world, report) = peerline_sim::run(config, &mut |_| {});
    println!("{}", report.summary());
    println!(
        "mailbox copies by recipient [live: acks, delivered data, undelivered data; offline; supernode]: {:?}",
        world.mailbox_census()
    );
    for line in world.undelivered().iter().take(20) {
        println!("{line}");
    }
    for line in world.name_conflicts().iter().take(400) {
        println!("{line}");
    }
    for line in world.lost_bundles().iter().take(12) {
        println!("{line}");
    }
    for line in world.underattached().iter().take(12) {
        println!("{line}");
    }
}
