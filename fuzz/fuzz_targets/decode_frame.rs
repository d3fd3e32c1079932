//! Any byte string given to `decode` yields a frame or an error, never a
//! panic; every accepted message re-encodes to bytes that decode to the same
//! message, and `peek_kind` agrees with the decoded message's kind.

#![no_main]

use libfuzzer_sys::fuzz_target;
use peerline_proto::{
    decode, encode_versioned, peek_kind, Frame, MESSAGE_LEN_MAX, VERSION_INFO_BYTE,
};

fuzz_target!(|data: &[u8]| {
    let peeked = peek_kind(data);
    match decode(data) {
        Ok(Frame::Message(message)) => {
            assert_eq!(peeked, Some(message.kind()));
            assert!(data.len() <= MESSAGE_LEN_MAX);
            let bytes =
                encode_versioned(data[0], &message).expect("a decoded message must encode again");
            // Canonical varints are never longer than what was accepted.
            assert!(bytes.len() <= data.len(), "re-encoding grew");
            match decode(&bytes) {
                Ok(Frame::Message(again)) => assert_eq!(again, message),
                other => panic!("re-encoded message decoded to {other:?}"),
            }
        }
        Ok(Frame::Versions(info)) => {
            assert_eq!(data, [VERSION_INFO_BYTE, info.min, info.max]);
        }
        Err(_) => {}
    }
});
