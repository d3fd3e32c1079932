//! What sealing and opening a key bundle costs with the production Argon2id
//! parameters, on this machine. Run it in release mode:
//!
//! ```text
//! cargo run --release -p peerline-core --example bundle_cost [rounds]
//! ```
//!
//! Prints the median and the spread of each step over `rounds` (default 5)
//! runs: the OPRF steps (blind, one holder's evaluation, combining three
//! answers) are microseconds; seal and open are dominated by Argon2id.

use peerline_core::bundle::{
    blind, deal_shares, evaluate, finalize, open_bundle, oprf_key, oprf_output_with_key,
    seal_bundle, BUNDLE_HOLDERS, BUNDLE_THRESHOLD, KDF_PARAMS_PRODUCTION,
};
use peerline_core::{CryptoMode, Keypair};
use peerline_proto::{Evaluation, Sharing};
use rand_core::SeedableRng;
use rand_pcg::Pcg64Mcg;
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct horse battery staple";

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|arg| arg.parse().expect("rounds: a number"))
        .unwrap_or(5)
        .max(1);
    let mut rng = Pcg64Mcg::seed_from_u64(1);
    let sharing = Sharing {
        threshold: BUNDLE_THRESHOLD,
        holders: BUNDLE_HOLDERS,
    };
    let params = KDF_PARAMS_PRODUCTION;
    println!(
        "Argon2id {} MiB, {} passes, {} lane(s); OPRF {} of {}; {rounds} rounds",
        params.memory_kib / 1024,
        params.iterations,
        params.parallelism,
        sharing.threshold,
        sharing.holders
    );

    let root = Keypair::generate(CryptoMode::Full, &mut rng);
    let account = root.public();
    let key = oprf_key(&root.secret_seed().expect("a real key"), 1);
    let shares = deal_shares(&key, sharing, &mut rng).expect("a valid sharing");
    let output = oprf_output_with_key(&key, PASSWORD, &account);

    let mut seal = Vec::new();
    let mut open = Vec::new();
    let mut oprf = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let sealed = seal_bundle(&root, PASSWORD, &output, params, sharing, 1, &mut rng)
            .expect("sealing works");
        seal.push(started.elapsed());

        let started = Instant::now();
        let (blinding, blinded) = blind(PASSWORD, &account, &mut rng);
        let answers: Vec<(u8, Evaluation)> = shares[..usize::from(sharing.threshold)]
            .iter()
            .map(|share| (share.index, evaluate(share, &blinded).expect("valid")))
            .collect();
        let login = finalize(&blinding, PASSWORD, &account, &answers).expect("valid");
        oprf.push(started.elapsed());
        assert_eq!(login, output);

        let started = Instant::now();
        let opened = open_bundle(&sealed, PASSWORD, &login).expect("the right password opens it");
        open.push(started.elapsed());
        assert_eq!(opened.public(), account);
    }
    report("seal (Argon2id + AEAD + signature)", &mut seal);
    report("open (signature check + Argon2id + AEAD)", &mut open);
    report("OPRF round (blind, 3 evaluations, finalize)", &mut oprf);
}

fn report(what: &str, times: &mut [Duration]) {
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "{what}: median {:.1} ms (min {:.1}, max {:.1})",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
}
