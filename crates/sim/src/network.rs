//! The network model: synthetic geography for per-pair latency, jitter,
//! random loss, NAT filtering and per-node clock offset and drift.

use rand_core::Rng;

/// Regions of the synthetic world: centre (x, y) in km and population share.
const REGIONS: [(f64, f64, f64); 6] = [
    (2_000.0, 3_000.0, 0.25),  // "Americas north"
    (4_000.0, 8_500.0, 0.08),  // "Americas south"
    (10_000.0, 2_500.0, 0.25), // "Europe"
    (11_500.0, 7_500.0, 0.07), // "Africa"
    (17_000.0, 3_500.0, 0.28), // "Asia"
    (18_500.0, 9_000.0, 0.07), // "Oceania"
];
const REGION_SPREAD_KM: f64 = 900.0;
/// Propagation over fibre including route stretch: ~100 km per ms.
const KM_PER_MS: f64 = 100.0;
/// Shortest access link delay of a node (ms): a host's first hop.
const ACCESS_MS_MIN: u8 = 2;
/// No datagram arrives sooner than this after it left: two access links.
/// The simulator runs a window this long of every node's events at once
/// (`world/batch.rs`), since nothing one node does can reach another in it.
pub const LATENCY_MIN_US: u64 = 2 * ACCESS_MS_MIN as u64 * 1_000;
/// Recent destinations a NAT remembers (port-restricted filtering).
pub const NAT_MEMORY: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Reachable by anyone.
    Public,
    /// Accepts packets only from addresses it recently sent to.
    PortRestricted,
}

/// Where a node sits and how its link behaves. 16 bytes.
#[derive(Clone, Copy, Debug)]
pub struct Place {
    /// Position in units of 10 km.
    pub x: i16,
    pub y: i16,
    pub region: u8,
    /// Last-mile delay, ms.
    pub access_ms: u8,
    /// Clock offset from true time, seconds.
    pub clock_offset_s: i32,
    /// Clock drift, ppm.
    pub clock_drift_ppm: i32,
}

impl Place {
    /// Which side of the `partition` scenario's cut the node is on: the
    /// Americas (regions 0 and 1) or the rest of the world.
    pub fn side(&self) -> bool {
        self.region <= 1
    }
}

pub fn gaussian(rng: &mut impl Rng) -> f64 {
    // Box–Muller on two uniforms.
    let u1 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * (u1.max(1e-300)).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

pub fn uniform(rng: &mut impl Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

pub fn place(rng: &mut impl Rng, clock_offset_max_s: u64, clock_drift_max_ppm: u32) -> Place {
    let pick = uniform(rng);
    let mut acc = 0.0;
    let mut region = REGIONS.len() - 1;
    for (i, (_, _, share)) in REGIONS.iter().enumerate() {
        acc += share;
        if pick < acc {
            region = i;
            break;
        }
    }
    let (cx, cy, _) = REGIONS[region];
    let x = cx + gaussian(rng) * REGION_SPREAD_KM;
    let y = cy + gaussian(rng) * REGION_SPREAD_KM;
    let offset_span = 2 * clock_offset_max_s as i64 + 1;
    let drift_span = 2 * clock_drift_max_ppm as i64 + 1;
    Place {
        x: (x / 10.0).clamp(-30_000.0, 30_000.0) as i16,
        y: (y / 10.0).clamp(-30_000.0, 30_000.0) as i16,
        region: region as u8,
        access_ms: ACCESS_MS_MIN + (rng.next_u32() % 14) as u8,
        clock_offset_s: ((rng.next_u64() % offset_span as u64) as i64 - clock_offset_max_s as i64)
            as i32,
        clock_drift_ppm: ((rng.next_u64() % drift_span as u64) as i64 - clock_drift_max_ppm as i64)
            as i32,
    }
}

/// One-way base latency between two places, microseconds.
pub fn base_latency_us(a: &Place, b: &Place) -> u64 {
    let dx = (a.x as f64 - b.x as f64) * 10.0;
    let dy = (a.y as f64 - b.y as f64) * 10.0;
    let km = (dx * dx + dy * dy).sqrt();
    let ms = a.access_ms as f64 + b.access_ms as f64 + km / KM_PER_MS;
    (ms * 1000.0) as u64
}

/// Base latency plus up to 10% jitter.
pub fn latency_us(a: &Place, b: &Place, rng: &mut impl Rng) -> u64 {
    let base = base_latency_us(a, b);
    base + rng.next_u64() % (base / 10 + 1)
}

/// A node's wall clock at true time `true_unix_s` (offset and drift applied).
pub fn wall_clock_s(place: &Place, true_unix_s: u64, elapsed_s: u64) -> u64 {
    let drift = elapsed_s as i64 * place.clock_drift_ppm as i64 / 1_000_000;
    (true_unix_s as i64 + place.clock_offset_s as i64 + drift).max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;
    use rand_pcg::Pcg64Mcg;

    #[test]
    fn latencies_are_plausible_and_symmetric() {
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        let places: Vec<Place> = (0..200).map(|_| place(&mut rng, 120, 50)).collect();
        for a in &places {
            for b in &places {
                let ab = base_latency_us(a, b);
                assert_eq!(ab, base_latency_us(b, a));
                assert!((LATENCY_MIN_US..400_000).contains(&ab), "{ab} us");
            }
            assert!(a.clock_offset_s.abs() <= 120 && a.clock_drift_ppm.abs() <= 50);
        }
    }
}
