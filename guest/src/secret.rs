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
}
