//! Property tests of the key-bundle wire types: decoding from any bytes is
//! total (a value or an error, never a panic), every value round trips, and
//! every truncation is refused. These types are not yet carried by a
//! `Message`, so they are decoded here directly with postcard, as the
//! supernode will decode them inside a message body.

use peerline_proto::{
    BlindedElement, Evaluation, KdfParams, KeyBundle, KeyBundleBody, PublicKey, ShareDeal,
    ShareDealBody, Sharing, Signature, BUNDLE_NONCE_LEN, BUNDLE_SALT_LEN, BUNDLE_TAG_LEN,
};
use proptest::array::{uniform16, uniform24, uniform32};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

fn signature() -> impl Strategy<Value = Signature> {
    (uniform32(any::<u8>()), uniform32(any::<u8>())).prop_map(|(a, b)| {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&a);
        bytes[32..].copy_from_slice(&b);
        Signature(bytes)
    })
}

fn kdf_params() -> impl Strategy<Value = KdfParams> {
    (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(memory_kib, iterations, parallelism)| {
        KdfParams {
            memory_kib,
            iterations,
            parallelism,
        }
    })
}

fn key_bundle() -> impl Strategy<Value = KeyBundle> {
    (
        uniform32(any::<u8>()),
        any::<u64>(),
        (any::<u8>(), any::<u8>()),
        kdf_params(),
        uniform16(any::<u8>()),
        uniform24(any::<u8>()),
        uniform32(any::<u8>()),
        uniform16(any::<u8>()),
        signature(),
    )
        .prop_map(
            |(
                account,
                version,
                (threshold, holders),
                kdf,
                salt,
                nonce,
                sealed_seed,
                tag,
                signature,
            )| {
                KeyBundle {
                    body: KeyBundleBody {
                        account_key: PublicKey(account),
                        version,
                        sharing: Sharing { threshold, holders },
                        kdf,
                        salt,
                        nonce,
                        sealed_seed,
                        tag,
                    },
                    signature,
                }
            },
        )
}

fn share_deal() -> impl Strategy<Value = ShareDeal> {
    (
        uniform32(any::<u8>()),
        (any::<u64>(), any::<u64>()),
        any::<u8>(),
        uniform32(any::<u8>()),
        signature(),
        uniform32(any::<u8>()),
    )
        .prop_map(
            |(account, (bundle_version, epoch), index, commitment, signature, share)| ShareDeal {
                body: ShareDealBody {
                    account_key: PublicKey(account),
                    bundle_version,
                    epoch,
                    index,
                    commitment,
                },
                signature,
                share,
            },
        )
}

/// Decodes exactly `bytes` (no trailing bytes), as the codec does.
fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Some(value),
        _ => None,
    }
}

fn check_round_trip<T>(value: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = postcard::to_allocvec(value).unwrap();
    let decoded = decode_exact::<T>(&bytes);
    prop_assert_eq!(decoded.as_ref(), Some(value));
    for len in 0..bytes.len() {
        prop_assert!(
            decode_exact::<T>(&bytes[..len]).is_none(),
            "prefix of {} of {} bytes decoded",
            len,
            bytes.len()
        );
    }
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // Failures are reported, not persisted: this file must not write
        // into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn bundle_types_decode_totally_from_arbitrary_bytes(bytes in vec(any::<u8>(), 0..400)) {
        let _ = decode_exact::<KeyBundle>(&bytes);
        let _ = decode_exact::<ShareDeal>(&bytes);
        let _ = decode_exact::<KdfParams>(&bytes);
        let element = decode_exact::<BlindedElement>(&bytes);
        let evaluation = decode_exact::<Evaluation>(&bytes);
        // An element is its 32 bytes, nothing else.
        prop_assert_eq!(element.is_some(), bytes.len() == 32);
        prop_assert_eq!(evaluation.is_some(), bytes.len() == 32);
    }

    /// Valid encodings with a few bytes overwritten reach deeper than random bytes.
    #[test]
    fn damaged_bundles_decode_or_fail_without_panic(
        bundle in key_bundle(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = postcard::to_allocvec(&bundle).unwrap();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let _ = decode_exact::<KeyBundle>(&bytes);
    }

    #[test]
    fn key_bundles_round_trip(bundle in key_bundle()) {
        check_round_trip(&bundle)?;
        // Fixed-size fields: the encoding is the sum of the fixed parts and
        // four varints (version, three KDF parameters), nothing that grows.
        let len = postcard::to_allocvec(&bundle).unwrap().len();
        let fixed = 32 + 2 + BUNDLE_SALT_LEN + BUNDLE_NONCE_LEN + 32 + BUNDLE_TAG_LEN + 1 + 64;
        prop_assert!(len <= fixed + 10 + 3 * 5, "{} bytes", len);
    }

    #[test]
    fn share_deals_round_trip(deal in share_deal()) {
        check_round_trip(&deal)?;
    }
}
