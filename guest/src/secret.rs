//! Per-VM secrets: generation from the OS CSPRNG and constant-time comparison.
//! It never logs or stores a secret, and no secret is compared any other way.

use subtle::ConstantTimeEq;

/// Length of a generated secret (design.md §3: at least 32 alphanumerics).
pub const SECRET_LEN: usize = 40;

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `len` random alphanumerics from the OS CSPRNG (rejection sampling, no modulo bias).
pub fn random_alnum(len: usize) -> Result<String, getrandom::Error> {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf)?;
        for &b in &buf {
            // 62 * 4 = 248: bytes >= 248 would bias the distribution.
            if b < 248 && out.len() < len {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

/// A fresh per-VM secret.
pub fn generate() -> Result<String, getrandom::Error> {
    random_alnum(SECRET_LEN)
}

/// Compare what was read from a file with the expected secret in constant time.
/// Surrounding ASCII white space in `candidate` (a trailing newline from `echo`)
/// is ignored; an empty expected secret never matches.
pub fn matches(expected: &str, candidate: &[u8]) -> bool {
    let candidate = candidate.trim_ascii();
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_distinct_alnum() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.len(), SECRET_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn compares() {
        assert!(matches("abc", b"abc"));
        assert!(matches("abc", b"abc\n"));
        assert!(!matches("abc", b"abd"));
        assert!(!matches("abc", b"ab"));
        assert!(!matches("abc", b"abcd"));
        assert!(!matches("", b""));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// A secret and candidates near it: itself, padded with white space, one
        /// byte changed, cut, extended, or anything at all.
        fn case() -> impl Strategy<Value = (String, Vec<u8>)> {
            (
                "[A-Za-z0-9]{0,48}",
                any::<usize>(),
                any::<u8>(),
                "[ \t\r\n]{0,3}",
            )
                .prop_flat_map(|(secret, at, byte, pad)| {
                    let s = secret.clone().into_bytes();
                    let mut changed = s.clone();
                    if !changed.is_empty() {
                        let i = at % changed.len();
                        changed[i] = byte;
                    }
                    let cut = s[..at % (s.len() + 1)].to_vec();
                    let mut longer = s.clone();
                    longer.push(byte);
                    let mut padded = pad.clone().into_bytes();
                    padded.extend(&s);
                    padded.extend(pad.as_bytes());
                    (
                        Just(secret),
                        prop_oneof![
                            Just(s),
                            Just(padded),
                            Just(changed),
                            Just(cut),
                            Just(longer),
                            proptest::collection::vec(any::<u8>(), 0..64),
                        ],
                    )
                })
        }

        proptest! {
            /// The contract: a candidate matches exactly when, without surrounding
            /// ASCII white space, it is the (non-empty) secret, byte for byte.
            #[test]
            fn only_the_secret_itself_matches((secret, candidate) in case()) {
                let exact = candidate.trim_ascii() == secret.as_bytes();
                prop_assert_eq!(matches(&secret, &candidate), !secret.is_empty() && exact);
            }

            /// Generated secrets are 40 alphanumerics, and match only themselves.
            #[test]
            fn generated_secrets_match_themselves(other in "[A-Za-z0-9]{40}") {
                let s = generate().unwrap();
                prop_assert!(s.len() == SECRET_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric()));
                prop_assert!(matches(&s, s.as_bytes()));
                prop_assert_eq!(matches(&s, other.as_bytes()), other == s);
            }
        }
    }
}
