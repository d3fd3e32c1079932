//! Any datagram on the node's port is sorted and handled without a panic:
//! the classifier is total, a relay frame that decodes re-encodes to the
//! same bytes, and a STUN answer never exceeds the amplification bound
//! (and, when it is an answer, it parses as a Binding success response
//! naming the sender).

#![no_main]

use libfuzzer_sys::fuzz_target;
use peerline_net::demux::{classify, DatagramKind};
use peerline_net::relay;
use peerline_net::stun::{handle_datagram, StunInput};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

fuzz_target!(|data: &[u8]| {
    let kind = classify(data);
    if let Ok(frame) = relay::decode(data) {
        assert_eq!(kind, DatagramKind::Relay);
        let mut again = Vec::new();
        relay::encode(frame, &mut again).expect("a decoded frame encodes");
        assert_eq!(again, data);
    }
    let senders = [
        SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 3478)),
        SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 3478)),
    ];
    for from in senders {
        match handle_datagram(data, from, 3) {
            StunInput::Answer(response) => {
                assert_eq!(kind, DatagramKind::Stun);
                assert!(response.len() <= 3 * data.len());
                match handle_datagram(&response, from, 3) {
                    StunInput::Mapped { reflexive, .. } => assert_eq!(reflexive, from),
                    other => panic!("our answer read back as {other:?}"),
                }
            }
            StunInput::Mapped { .. } | StunInput::Refused { .. } | StunInput::Ignored => {
                assert_eq!(kind, DatagramKind::Stun);
            }
            StunInput::TooLarge | StunInput::Malformed => {}
        }
    }
});
