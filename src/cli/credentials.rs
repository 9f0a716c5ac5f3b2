//! systemd credentials (`LoadCredential=` in the unit): the PAT (`runner-pat`) and
//! the App's private key (`runner-app-key`) as files in `$CREDENTIALS_DIRECTORY`.
//!
//! It finds and reads them (bounded, trailing newline trimmed) and never logs a
//! value; it must not decide which credential wins (`config` does: the command
//! line and the environment come first).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::types::secret::Secret;

/// The PAT's credential name (`LoadCredential=runner-pat:/etc/gh-runner-microvm/%i.pat`).
pub const PAT: &str = "runner-pat";
/// The App key's credential name (`LoadCredential=runner-app-key:/etc/gh-runner-microvm/%i.pem`).
pub const APP_KEY: &str = "runner-app-key";
/// A PAT is ~100 bytes and an App's RSA key ~3 KiB; anything this large is not one.
const MAX_BYTES: u64 = 64 * 1024;

/// Why a credential systemd should have given us is unusable.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Missing or unreadable.
    #[error(
        "cannot read the systemd credential {} ({source}): give the unit LoadCredential={name}:FILE \
         with a file that exists (see README, \"Run it as a service\"), or give the credential another way",
        path.display()
    )]
    Read {
        /// The credential's name.
        name: &'static str,
        /// Where it should be.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Empty, too large or not text.
    #[error("the systemd credential {} is {why}: put only the {name} in the file LoadCredential={name}: names", path.display())]
    Invalid {
        /// The credential's name.
        name: &'static str,
        /// Where it is.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// `$CREDENTIALS_DIRECTORY`, when systemd set one.
fn directory() -> Option<PathBuf> {
    std::env::var_os("CREDENTIALS_DIRECTORY")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// The PAT from `$CREDENTIALS_DIRECTORY/runner-pat`; `None` without a credentials
/// directory.
pub fn pat() -> Result<Option<Secret>, CredentialError> {
    match directory() {
        Some(dir) => read(&dir, PAT).map(Some),
        None => Ok(None),
    }
}

/// The path of `$CREDENTIALS_DIRECTORY/runner-app-key`, checked readable; `None`
/// without a credentials directory. (The key is read where every `--app-key` is.)
pub fn app_key() -> Result<Option<PathBuf>, CredentialError> {
    match directory() {
        Some(dir) => read(&dir, APP_KEY).map(|_| Some(dir.join(APP_KEY))),
        None => Ok(None),
    }
}

/// Read credential `name` in `dir`: at most [`MAX_BYTES`], UTF-8, trailing
/// newlines trimmed, not empty.
fn read(dir: &Path, name: &'static str) -> Result<Secret, CredentialError> {
    let path = dir.join(name);
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|source| CredentialError::Read {
            name,
            path: path.clone(),
            source,
        })?;
    let invalid = |why| CredentialError::Invalid {
        name,
        path: path.clone(),
        why,
    };
    if bytes.len() as u64 > MAX_BYTES {
        return Err(invalid("larger than 64 KiB"));
    }
    let text = String::from_utf8(bytes).map_err(|_| invalid("not text"))?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return Err(invalid("empty"));
    }
    Ok(Secret::from(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_trims_and_bounds() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(PAT), "tok-123\r\n\n").unwrap();
        assert_eq!(read(d.path(), PAT).unwrap().expose(), "tok-123");
        std::fs::write(d.path().join(PAT), "\n").unwrap();
        assert!(read(d.path(), PAT)
            .unwrap_err()
            .to_string()
            .contains("is empty"));
        std::fs::write(d.path().join(PAT), vec![b'a'; 64 * 1024 + 1]).unwrap();
        assert!(read(d.path(), PAT)
            .unwrap_err()
            .to_string()
            .contains("larger than 64 KiB"));
        std::fs::write(d.path().join(PAT), [0xff, 0xfe]).unwrap();
        assert!(read(d.path(), PAT)
            .unwrap_err()
            .to_string()
            .contains("not text"));
    }

    #[test]
    fn a_missing_credential_names_the_file_and_the_unit_line() {
        let d = tempfile::tempdir().unwrap();
        let e = read(d.path(), APP_KEY).unwrap_err().to_string();
        let file = d.path().join(APP_KEY);
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(e.contains("LoadCredential=runner-app-key:"), "{e}");
    }

    #[test]
    fn the_value_never_shows_in_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(PAT), "secret-value\0\n").unwrap();
        // Valid: NUL is text; only its Debug is checked here.
        let s = read(d.path(), PAT).unwrap();
        assert!(!format!("{s:?}").contains("secret-value"));
    }
}
