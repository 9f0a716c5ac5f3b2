//! Where GitHub is: the API and web URLs for `-g` (github.com, `*.ghe.com`, GHES,
//! or a URL) and the registration scope (`-s`). Values only: no request is sent.

/// Registration scope (`-s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScopeKind {
    /// A repository: `-p owner/repo`.
    Repo,
    /// An organisation: `-p org`.
    Org,
    /// An enterprise: `-p enterprise-slug`.
    Enterprise,
}

/// Where GitHub is: API base and web base (`-g`, design.md §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// REST API base, e.g. `https://api.github.com` or `https://HOST/api/v3`.
    pub api: String,
    /// Web base, for the runner's `--url`: `https://github.com`, `https://HOST`.
    pub web: String,
}

impl Endpoints {
    /// Derive the endpoints from `-g`: `github.com`, a `*.ghe.com` host, a GHES
    /// host, or a URL with a scheme (then the API is `<url>/api/v3`).
    pub fn from_github(g: &str) -> Result<Endpoints, String> {
        let g = g.trim().trim_end_matches('/');
        if g.is_empty() {
            return Err("-g/--github is empty".into());
        }
        let (scheme, host) = match g.split_once("://") {
            Some((s @ ("http" | "https"), h)) => (s, h),
            Some((s, _)) => {
                return Err(format!(
                    "-g/--github: unsupported scheme {s:?} (use http or https)"
                ))
            }
            None => ("https", g),
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("-g/--github: {g:?} is not a host name or URL"));
        }
        let web = format!("{scheme}://{host}");
        let api = if host == "github.com" || host == "www.github.com" {
            return Ok(Endpoints {
                api: "https://api.github.com".into(),
                web: "https://github.com".into(),
            });
        } else if host.ends_with(".ghe.com") && !host.contains('/') && !host.contains(':') {
            format!("{scheme}://api.{host}")
        } else {
            format!("{web}/api/v3")
        };
        Ok(Endpoints { api, web })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoints::from_github("github.com").unwrap();
        assert_eq!(
            (e.api.as_str(), e.web.as_str()),
            ("https://api.github.com", "https://github.com")
        );
        let e = Endpoints::from_github("octo.ghe.com").unwrap();
        assert_eq!(
            (e.api.as_str(), e.web.as_str()),
            ("https://api.octo.ghe.com", "https://octo.ghe.com")
        );
        let e = Endpoints::from_github("ghes.example.com").unwrap();
        assert_eq!(e.api, "https://ghes.example.com/api/v3");
        let e = Endpoints::from_github("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            (e.api.as_str(), e.web.as_str()),
            ("http://127.0.0.1:8080/api/v3", "http://127.0.0.1:8080")
        );
        assert!(Endpoints::from_github("ftp://x").is_err());
        assert!(Endpoints::from_github("").is_err());
    }
}
