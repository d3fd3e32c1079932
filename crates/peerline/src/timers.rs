//! Protocol parameters shortened for networks on one machine: `peerline
//! demo` and `peerline node --fast-timers` (the multi-process chaos test).
//! The same few changes in both places, each with its reason, and a line
//! per change for whoever runs them to read.

use peerline_core::Params;

/// Production parameters with the timers a one-minute run on loopback
/// cannot wait for shortened, and one line per change saying so.
pub fn fast() -> (Params, Vec<String>) {
    let production = Params::default();
    let params = Params {
        // A one-off cost per supernode start (each draw is a hash; the
        // check is one hash either way): 2^22 draws per supernode would
        // spend a one-minute run on puzzles. Every node of a network must
        // agree on it, as they check each other's puzzles.
        id_puzzle_difficulty_bits: 16,
        // A message lost with a killed supernode waits for its sender's
        // re-send; 30 s would not fit a one-minute run.
        outbox_resend_base_ms: 3_000,
        // A client that loses *both* supernodes hears no warning (warnings
        // travel through its supernodes) and finds out from keepalives:
        // within ~54 s at the production period (sized for NAT bindings,
        // which loopback does not have), within ~8 s at this one.
        keepalive_interval_ms: 3_000,
        pong_timeout_ms: 1_000,
        ..production.clone()
    };
    let overrides = vec![
        format!(
            "keepalive every {} s, pong timeout {} s (production {} s, {} s)",
            params.keepalive_interval_ms / 1_000,
            params.pong_timeout_ms / 1_000,
            production.keepalive_interval_ms / 1_000,
            production.pong_timeout_ms / 1_000
        ),
        format!(
            "ID puzzle {} bits (production {})",
            params.id_puzzle_difficulty_bits, production.id_puzzle_difficulty_bits
        ),
        format!(
            "outbox re-send from {} s (production {} s)",
            params.outbox_resend_base_ms / 1_000,
            production.outbox_resend_base_ms / 1_000
        ),
    ];
    (params, overrides)
}

/// `--loopback-test-network` (`peerline node`, `account create`,
/// `lookup`): [`fast`], and name certificates may carry several votes
/// from one network. Every node of a loopback network shares 127.0.0.1,
/// so production's one voter per /24 would leave a single voter and no
/// name could reach its quorum; clients check certificates by the same
/// rule, so they take the flag too.
pub fn loopback_test_network() -> (Params, Vec<String>) {
    let (mut params, mut overrides) = fast();
    params.name_one_voter_per_network = false;
    overrides.push("several name votes per network (production: one per /24 or /48)".into());
    (params, overrides)
}
