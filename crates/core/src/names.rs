//! Usernames: which strings are names, and which names are the same.
//!
//! A person types a name; the network must agree on one spelling of it and
//! on which other spellings are the same name, or "alice" could be
//! registered a second time as "Alice", "ａｌｉｃｅ" or "аlice" (with a
//! Cyrillic а). [`normalize`] settles both:
//!
//! 1. **NFKC, then full case folding, then NFKC again** (Unicode's
//!    NFKC_Casefold up to its default-ignorable removal, which step 3
//!    refuses instead): compatibility forms (ﬁ, ｆｕｌｌ ｗｉｄｔｈ) and case
//!    (ß → ss, Σ → σ) collapse to one spelling, the one a name record
//!    carries.
//! 2. **Length**: 3–32 characters after normalization.
//! 3. **Charset**: every character must be allowed in identifiers by
//!    Unicode's General Security Profile (UTS #39 §3.1: letters and digits
//!    of scripts in modern use, no symbols, emoji, spaces or invisible
//!    characters), plus the separators `.` `-` `_`, never first, last or
//!    two in a row.
//! 4. **One script** (UTS #39 §5.2 "highly restrictive": a single script,
//!    or Han with Japanese kana or Korean Hangul): no name mixes Latin with
//!    Cyrillic or Greek look-alikes.
//! 5. **The key is the confusable skeleton** (UTS #39 §4): names that look
//!    alike ("paypal" and an all-Cyrillic "раураl"; "bob_1" and "bob_l")
//!    have the same [`Name::key`], so they are one name in the directory —
//!    whoever registers first owns every look-alike.
//!
//! Pure functions over strings: no clock, no I/O, the same answer on every
//! node (the Unicode data is compiled into the crates, so nodes built with
//! the same crate versions agree; `UNICODE_VERSION` is part of that).

use icu_casemap::CaseMapper;
use peerline_proto::NodeId;
use unicode_normalization::UnicodeNormalization;
use unicode_security::{
    skeleton, GeneralSecurityProfile, RestrictionLevel, RestrictionLevelDetection,
};

/// Shortest and longest name, in characters after normalization.
pub const NAME_CHARS_MIN: usize = 3;
pub const NAME_CHARS_MAX: usize = 32;
/// The separators a name may contain (never first, last or doubled).
pub const SEPARATORS: [char; 3] = ['.', '-', '_'];
/// The Unicode version the rules come from.
pub const UNICODE_VERSION: (u64, u64, u64) = unicode_security::UNICODE_VERSION;

/// A name in its one agreed spelling.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Name {
    normalized: String,
    key: NodeId,
}

impl Name {
    /// The spelling every node uses (what a name record carries).
    pub fn as_str(&self) -> &str {
        &self.normalized
    }

    /// Where the name lives in the directory: the hash of its confusable
    /// skeleton, so look-alikes share it.
    pub fn key(&self) -> NodeId {
        self.key
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.normalized)
    }
}

/// Why a string is not a name: each says what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("\"{name}\" is {chars} characters; a name has at least {NAME_CHARS_MIN}")]
    TooShort { name: String, chars: usize },
    #[error("the name is {chars} characters; a name has at most {NAME_CHARS_MAX}")]
    TooLong { chars: usize },
    #[error(
        "{} (U+{:04X}) at position {position} is not allowed in a name: use letters, digits and . - _",
        shown(*character),
        u32::from(*character)
    )]
    NotAllowed { character: char, position: usize },
    #[error(
        "\"{name}\" starts, ends or doubles a separator (. - _); put letters or digits around each"
    )]
    Separator { name: String },
    #[error("\"{name}\" mixes scripts (e.g. Latin with Cyrillic letters); a name uses one script, so it cannot imitate another")]
    MixedScripts { name: String },
}

/// A character as an error message can show it (the code point follows
/// anyway; invisible ones are named rather than printed).
fn shown(character: char) -> String {
    let invisible = matches!(
        character,
        '\u{AD}' | '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}'
    );
    match character {
        ' ' => "a space".to_string(),
        c if c.is_whitespace() || c.is_control() || invisible => {
            "an invisible character".to_string()
        }
        c => format!("'{c}'"),
    }
}

/// The agreed spelling of `input`, or why it is no name.
pub fn normalize(input: &str) -> Result<Name, NameError> {
    let compatible: String = input.nfkc().collect();
    let folded = CaseMapper::new().fold_string(&compatible);
    let normalized: String = folded.nfkc().collect();
    let chars = normalized.chars().count();
    if chars == 0 {
        return Err(NameError::Empty);
    }
    if let Some((position, character)) = normalized
        .chars()
        .enumerate()
        .find(|(_, c)| !SEPARATORS.contains(c) && !c.identifier_allowed())
    {
        return Err(NameError::NotAllowed {
            character,
            position: position + 1,
        });
    }
    if chars < NAME_CHARS_MIN {
        return Err(NameError::TooShort {
            name: normalized,
            chars,
        });
    }
    if chars > NAME_CHARS_MAX {
        return Err(NameError::TooLong { chars });
    }
    let separators_ok = {
        let first_last_ok =
            !normalized.starts_with(SEPARATORS) && !normalized.ends_with(SEPARATORS);
        let no_doubles = normalized
            .chars()
            .zip(normalized.chars().skip(1))
            .all(|(a, b)| !(SEPARATORS.contains(&a) && SEPARATORS.contains(&b)));
        first_last_ok && no_doubles
    };
    if !separators_ok {
        return Err(NameError::Separator { name: normalized });
    }
    if normalized.detect_restriction_level() > RestrictionLevel::HighlyRestrictive {
        return Err(NameError::MixedScripts { name: normalized });
    }
    let key = name_key(&normalized);
    Ok(Name { normalized, key })
}

fn name_key(normalized: &str) -> NodeId {
    let skeleton: String = skeleton(normalized).collect();
    let mut hasher = blake3::Hasher::new_derive_key("peerline v1 name key");
    hasher.update(skeleton.as_bytes());
    NodeId(*hasher.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The normalization table: what people type, and what the network
    /// makes of it.
    #[test]
    fn names_normalize_as_the_table_says() {
        let ok = [
            ("alice", "alice"),
            ("Alice", "alice"),
            ("ALICE", "alice"),
            ("ａｌｉｃｅ", "alice"),
            ("ﬁona", "fiona"),
            ("Straße", "strasse"),
            ("ΣΊΣΥΦΟΣ", "σίσυφοσ"),
            ("Ǆemal", "džemal"),
            ("bob.smith", "bob.smith"),
            ("bob-smith_2", "bob-smith_2"),
            ("山田太郎", "山田太郎"),
            ("やまだ", "やまだ"),
            ("山田たろう", "山田たろう"),
            ("Müller", "müller"),
            ("007", "007"),
            (
                "abcdefghijklmnopqrstuvwxyz012345",
                "abcdefghijklmnopqrstuvwxyz012345",
            ),
        ];
        for (input, expected) in ok {
            let name = normalize(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(name.as_str(), expected, "{input:?}");
        }
        type Expect = fn(&NameError) -> bool;
        let refused: [(&str, Expect); 12] = [
            ("", |e| *e == NameError::Empty),
            ("ab", |e| matches!(e, NameError::TooShort { chars: 2, .. })),
            ("abcdefghijklmnopqrstuvwxyz0123456", |e| {
                matches!(e, NameError::TooLong { chars: 33 })
            }),
            ("bob smith", |e| {
                matches!(
                    e,
                    NameError::NotAllowed {
                        character: ' ',
                        position: 4
                    }
                )
            }),
            ("bob😀", |e| {
                matches!(e, NameError::NotAllowed { position: 4, .. })
            }),
            ("bob\u{200b}x", |e| {
                matches!(e, NameError::NotAllowed { .. })
            }),
            ("bob@home", |e| {
                matches!(e, NameError::NotAllowed { character: '@', .. })
            }),
            ("-bob", |e| matches!(e, NameError::Separator { .. })),
            ("bob.", |e| matches!(e, NameError::Separator { .. })),
            ("bo..b", |e| matches!(e, NameError::Separator { .. })),
            // A Cyrillic а among Latin letters.
            ("pаypal", |e| matches!(e, NameError::MixedScripts { .. })),
            ("aliceα", |e| matches!(e, NameError::MixedScripts { .. })),
        ];
        for (input, expected) in refused {
            let error = normalize(input).expect_err(input);
            assert!(expected(&error), "{input:?} gave {error:?}");
            assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn look_alikes_are_one_name() {
        let key = |name: &str| normalize(name).unwrap().key();
        assert_eq!(key("paypal"), key("PayPal"));
        // All Cyrillic, one script: allowed, and the same name as "coco".
        assert_eq!(key("\u{441}\u{43e}\u{441}\u{43e}"), key("coco"));
        assert_eq!(key("bob_1"), key("bob_l"));
        assert_ne!(key("alice"), key("alicia"));
    }

    #[test]
    fn errors_say_what_to_change() {
        let message = normalize("bob smith").unwrap_err().to_string();
        assert_eq!(
            message,
            "a space (U+0020) at position 4 is not allowed in a name: use letters, digits and . - _"
        );
        let message = normalize("ab").unwrap_err().to_string();
        assert_eq!(message, "\"ab\" is 2 characters; a name has at least 3");
    }

    proptest! {
        #[test]
        fn normalizing_is_total_and_idempotent(input in "\\PC{0,40}") {
            if let Ok(name) = normalize(&input) {
                let again = normalize(name.as_str()).expect("a normalized name is a name");
                prop_assert_eq!(again, name);
            }
        }

        #[test]
        fn case_never_makes_two_names(input in "[a-zA-Z][a-zA-Z0-9]{2,20}") {
            let lower = normalize(&input.to_lowercase()).unwrap();
            let upper = normalize(&input.to_uppercase()).unwrap();
            prop_assert_eq!(lower.key(), upper.key());
        }
    }
}
