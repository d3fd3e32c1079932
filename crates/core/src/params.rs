//! Protocol parameters. Production and the simulator use the same values;
//! the simulator's report lists them.

use serde::Serialize;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Params {
    // ---- client: attachments (login) ----
    /// Supernodes a client keeps attached at once.
    pub attachments_target: usize,
    /// Keepalive period; ≤ 25 s keeps ordinary NAT bindings open.
    pub keepalive_interval_ms: u64,
    /// Every how many keepalives is a ping (answered with a pong, which
    /// checks the supernode is alive); the others are a bare `Keepalive`
    /// that only holds the NAT binding. 2: a silent supernode is noticed
    /// within two intervals plus the retries (a crash is usually reported
    /// sooner by the client's other supernode, `PeerDown`), and the
    /// overlay carries a fifth fewer datagrams.
    pub keepalive_check_every: u32,
    /// Wait for a pong before resending the ping.
    pub pong_timeout_ms: u64,
    /// Unanswered pings in a row after which the supernode counts as dead.
    pub keepalive_misses_max: u32,
    /// Wait for an attach step (challenge or acceptance) before retrying.
    pub attach_step_timeout_ms: u64,
    /// A spare handshake unanswered this long, while one of the client's
    /// supernodes is suspected, gets a second one racing it (`Client::wanted`).
    pub attach_hedge_ms: u64,
    /// Attach attempts to one supernode before moving on.
    pub attach_tries_max: u32,
    /// Entries kept in a client's host cache.
    pub host_cache_len_max: usize,
    /// Random host-cache candidates compared when choosing a supernode.
    pub host_cache_choices: usize,
    /// Back-off before retrying a supernode that failed, first step.
    pub retry_backoff_base_ms: u64,
    /// Ceiling of that back-off.
    pub retry_backoff_max_ms: u64,
    /// Wait after an attachment change before publishing presence, so that
    /// two attachments completing together give one record.
    pub presence_debounce_ms: u64,

    // ---- presence records ----
    pub presence_ttl_s: u64,
    /// A device re-signs its record this often.
    pub presence_refresh_s: u64,
    /// Clock skew tolerated when checking issue and expiry times.
    pub clock_skew_tolerance_s: u64,
    /// Lifetime of a device certificate issued by an account.
    pub device_cert_ttl_s: u64,

    // ---- lookups ----
    pub lookup_timeout_ms: u64,
    /// Parallel requests per lookup round (Kademlia alpha).
    pub lookup_alpha: usize,
    /// Rounds before a lookup gives up.
    pub lookup_rounds_max: u32,
    /// Wait for one FindValue answer.
    pub find_request_timeout_ms: u64,
    /// Lookups a supernode runs at once for its clients.
    pub lookups_in_flight_max: usize,

    // ---- supernode ----
    /// Attachment slots a supernode offers.
    pub supernode_capacity_attachments: usize,
    /// A client slot without a ping for this long is freed.
    pub client_idle_timeout_ms: u64,
    /// A supernode shutting down gracefully keeps serving its clients this
    /// long at most while they attach elsewhere (`Message::Leaving`), then
    /// detaches those left. Clients move in about one handshake (a few
    /// hundred ms); the bound is for clients that find nowhere to go.
    pub drain_max_ms: u64,
    /// Records are kept on this many supernodes closest to their key.
    pub replication_k: usize,
    /// Housekeeping period: expiry sweeps, load announcements.
    pub sweep_interval_ms: u64,
    /// Relay bindings (peer pairs) a supernode holds at once, and how long
    /// one lasts unless its peers refresh it (`relay.rs`).
    pub relay_bindings_max: usize,
    pub relay_lifetime_s: u16,
    /// Relay requests a supernode checks per second (each costs a
    /// signature check), and the bucket's depth; beyond it, `RelayRefused`
    /// with the wait.
    pub relay_requests_per_s: u64,
    pub relay_request_burst: u64,
    /// Name registration (`registry.rs`): supernodes asked to vote on a
    /// name (a majority certifies), the proof of work on a claim's hash in
    /// leading zero bits, how long an undecided vote holds, how long a
    /// coordinator waits for votes, and whether a quorum takes at most one
    /// voter per /24 (/48) — off only on a loopback test network, where
    /// every node shares 127.0.0.1.
    pub name_quorum_len: usize,
    pub name_pow_bits: u32,
    pub name_vote_hold_s: u64,
    pub name_vote_timeout_ms: u64,
    /// A voter collects concurrent claims on a name this long before voting
    /// for the lowest claim hash among them (`registry::VoteWindows`).
    pub name_vote_window_ms: u64,
    pub name_one_voter_per_network: bool,
    /// Challenge validity window (a challenge is valid in its window and the next).
    pub challenge_window_s: u64,

    // ---- overload control (supernode) and resumption ----
    /// Login budget: handshake tokens per second and the bucket's depth. A
    /// full login costs `login_cost_tokens`, a resume with a ticket one.
    /// 50/s: a full login costs a supernode ~0.7 ms of CPU (the simulator's
    /// measured cost table), so the budget is ~4% of a core. At 20/s it
    /// was the bottleneck of a crash wave: two thirds of the busy answers
    /// were for a spent budget, at supernodes whose CPU was ~75% idle, and
    /// a freshly promoted supernode took 50 s to fill.
    pub handshakes_per_s: u64,
    pub handshake_burst: u64,
    pub login_cost_tokens: u64,
    /// Tokens a full login must leave in the bucket: the last of the budget
    /// goes to resuming clients (cheaper, and they were attached already).
    pub login_reserve_tokens: u64,
    /// Lookups a supernode starts per second for its clients, and the depth.
    pub lookups_per_s: u64,
    pub lookup_burst: u64,
    /// Lifetime of a resumption ticket; must stay below the revocation bound
    /// (how long a revoked device may keep logging in), see ARCHITECTURE.md.
    pub ticket_ttl_s: u64,
    /// A client's ticket is renewed (in a pong) once it is this old.
    pub ticket_refresh_s: u64,
    /// Devices whose last resume counter a supernode remembers (replay
    /// guard); when full, resumes fall back to a full login.
    pub resume_counters_max: usize,
    /// Envelopes one supernode keeps in mailboxes, and per sending device.
    pub mailbox_len_max: usize,
    pub mailbox_sender_quota: u32,
    /// An envelope nobody collected is dropped after this (its sender's
    /// outbox still has it and sends it again).
    pub mailbox_ttl_s: u64,
    /// An unacknowledged message is re-sent after this (doubling, jittered)…
    pub outbox_resend_base_ms: u64,
    /// …up to this.
    pub outbox_resend_max_ms: u64,
    /// Most outbox messages sent in one go (the rest follow a second later).
    pub outbox_sends_per_tick: usize,
    /// The simulator's naive baseline: no admission control, fixed-interval
    /// retries, no redirects, no tickets, disconnect when overloaded. Never
    /// set outside the simulator.
    pub naive: bool,

    // ---- membership gossip (SWIM-style) ----
    pub gossip_period_ms: u64,
    /// A probe's second ping goes out this long after the first if no ack
    /// came yet (most acks arrive within one round trip, ~50–300 ms)…
    pub gossip_probe_retry_ms: u64,
    /// …and the target is suspected when neither is acknowledged this long
    /// after the second (the farthest round trip is ~500 ms). Two pings
    /// keep a lost datagram from raising a false suspicion; sending the
    /// second early (not after a full timeout) detects a crashed supernode
    /// ~0.8 s sooner, and its clients re-attach that much sooner.
    pub gossip_ack_timeout_ms: u64,
    /// A suspected member not refuting within this is declared dead.
    pub suspect_timeout_ms: u64,
    /// Each update is piggybacked this many times × log2(members).
    pub gossip_retransmit_mult: u32,
    /// Dead members remembered, so stale "alive" rumours cannot revive them.
    pub tombstone_ttl_ms: u64,
    /// Most members a supernode keeps in its view (full membership below it).
    pub membership_view_len_max: usize,
    /// Most members per Kademlia bucket once the view is capped.
    pub membership_bucket_len_max: usize,
    /// Load change (percentage points) that triggers a new announcement.
    pub load_announce_delta_pct: u8,

    // ---- reachability and promotion ----
    /// Wait between reachability probe attempts.
    pub probe_interval_s: u64,
    /// Uptime before a reachable client may promote itself.
    pub promote_uptime_s: u64,
    /// Average load of its supernodes above which a client considers promotion.
    pub promote_load_pct: u8,
    /// Promotions expected at one check per supernode's worth of eligible
    /// clients (`supernode_capacity_attachments` of them), in percent: each
    /// eligible client promotes with chance `promote_share_pct / 100 /
    /// capacity`. Scaling by the capacity keeps the answer the same at every
    /// network size: the clients a crash wave leaves waiting number about
    /// (missing capacity × capacity per supernode), so about
    /// `promote_share_pct`% of the missing supernodes (times the fraction of
    /// waiting clients that are eligible) appear per check, and the check
    /// escalation closes the rest. In the simulator about 7% of the waiting
    /// clients are eligible at a check, so 400 makes a quarter of the
    /// deficit per check: a 20k-client crash wave promotes ~25 where ~20
    /// are missing (a flat 2% chance promoted 67, and at 200k clients 940).
    pub promote_share_pct: u32,
    /// Period of the promotion check.
    pub promote_check_interval_s: u64,
    /// A supernode below this load for `demote_idle_s` may step down…
    pub demote_load_pct: u8,
    pub demote_idle_s: u64,
    /// …but only while the average load of its view is below this.
    pub demote_network_load_pct: u8,

    // ---- identity ----
    /// Leading zero bits the node-ID puzzle demands.
    pub id_puzzle_difficulty_bits: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            attachments_target: 2,
            keepalive_interval_ms: 25_000,
            keepalive_check_every: 2,
            pong_timeout_ms: 2_000,
            keepalive_misses_max: 3,
            attach_step_timeout_ms: 2_000,
            attach_hedge_ms: 600,
            attach_tries_max: 2,
            host_cache_len_max: 64,
            host_cache_choices: 4,
            retry_backoff_base_ms: 2_000,
            retry_backoff_max_ms: 15_000,
            presence_debounce_ms: 1_500,
            presence_ttl_s: 3_600,
            presence_refresh_s: 1_800,
            clock_skew_tolerance_s: 600,
            device_cert_ttl_s: 30 * 24 * 3_600,
            lookup_timeout_ms: 6_000,
            lookup_alpha: 3,
            lookup_rounds_max: 6,
            find_request_timeout_ms: 1_000,
            lookups_in_flight_max: 512,
            supernode_capacity_attachments: 1_000,
            client_idle_timeout_ms: 80_000,
            drain_max_ms: 5_000,
            replication_k: 4,
            sweep_interval_ms: 10_000,
            relay_bindings_max: 256,
            relay_lifetime_s: 120,
            relay_requests_per_s: 20,
            relay_request_burst: 60,
            name_quorum_len: 5,
            name_pow_bits: 16,
            name_vote_hold_s: 300,
            name_vote_timeout_ms: 3_000,
            name_vote_window_ms: 500,
            name_one_voter_per_network: true,
            challenge_window_s: 30,
            handshakes_per_s: 50,
            handshake_burst: 100,
            login_cost_tokens: 2,
            login_reserve_tokens: 15,
            lookups_per_s: 100,
            lookup_burst: 300,
            ticket_ttl_s: 900,
            ticket_refresh_s: 300,
            resume_counters_max: 8_192,
            mailbox_len_max: 200_000,
            mailbox_sender_quota: 512,
            mailbox_ttl_s: 14 * 24 * 3_600,
            outbox_resend_base_ms: 30_000,
            outbox_resend_max_ms: 600_000,
            outbox_sends_per_tick: 16,
            naive: false,
            gossip_period_ms: 500,
            gossip_probe_retry_ms: 250,
            gossip_ack_timeout_ms: 600,
            suspect_timeout_ms: 4_000,
            gossip_retransmit_mult: 3,
            tombstone_ttl_ms: 120_000,
            membership_view_len_max: 20_000,
            membership_bucket_len_max: 20_000,
            load_announce_delta_pct: 5,
            probe_interval_s: 1_800,
            promote_uptime_s: 600,
            promote_load_pct: 90,
            promote_share_pct: 400,
            promote_check_interval_s: 300,
            demote_load_pct: 10,
            demote_idle_s: 3_600,
            demote_network_load_pct: 50,
            id_puzzle_difficulty_bits: 22,
        }
    }
}
