//! A credential held in memory (a PAT, a fixed `-S` secret): its `Debug` says
//! `<redacted>`, so no log line, panic or `{:?}` of a config can print it. It
//! does not compare or store secrets (`protocol::secret` compares).

/// A credential whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that must hand it on.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s: Secret = "ghp_abcdef".parse().unwrap();
        assert_eq!(
            format!("{s:?} {:?}", Some(s.clone())),
            "<redacted> Some(<redacted>)"
        );
        assert_eq!(s.expose(), "ghp_abcdef");
    }
}
