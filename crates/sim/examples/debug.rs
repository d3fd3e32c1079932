fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let mut config = peerline_sim::SimConfig::new(
        peerline_sim::Scenario::Steady,
        args[0] as u32,
        args[1] as u32,
        args[2],
    );
    config.duration_s = args[3];
    let (world, report) = peerline_sim::run(config, &mut |_| {});
    println!("{}", report.summary());
    for line in world.underattached().iter().take(12) {
        println!("{line}");
    }
}
