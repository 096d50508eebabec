//! Finds the Debian mirror the build host's apt uses.
//!
//! Reads one-line style `sources.list` files and deb822 `*.sources` files and
//! picks the first `deb` entry whose suites include the recipe's suite and
//! whose URI looks like a Debian archive (not a security or third-party
//! repository).

use std::path::{Path, PathBuf};

/// Errors while looking for a mirror.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// No apt source serves the suite.
    #[error(
        "No Debian mirror for suite {suite} in the host's apt sources ({searched}); pass --mirror URL or set DEBVISOR_MIRROR"
    )]
    NotFound {
        /// Wanted suite.
        suite: String,
        /// Files looked at.
        searched: String,
    },
    /// A mirror given on the command line is not a URL.
    #[error("Mirror {0:?} is not an http(s) or file URL")]
    BadUrl(String),
}

/// One `deb` source entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Archive URI.
    pub uri: String,
    /// Suites it serves.
    pub suites: Vec<String>,
}

/// Validates an explicit mirror URL (flag or environment).
pub fn check_url(url: &str) -> Result<String, MirrorError> {
    let ok = (url.starts_with("http://") || url.starts_with("https://") || url.starts_with("file:/"))
        && url
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\' | '`' | '$'));
    if ok {
        Ok(url.trim_end_matches('/').to_owned())
    } else {
        Err(MirrorError::BadUrl(url.to_owned()))
    }
}

/// The mirror to use: `explicit` (a flag or `DEBVISOR_MIRROR`) when given,
/// else the host's apt configuration for `suite`.
pub fn resolve(explicit: Option<&str>, suite: &str) -> Result<String, MirrorError> {
    match explicit {
        Some(url) => check_url(url),
        None => from_host(Path::new("/etc/apt"), suite),
    }
}

/// Finds the mirror for `suite` in the apt configuration under `etc_apt`
/// (normally `/etc/apt`).
pub fn from_host(etc_apt: &Path, suite: &str) -> Result<String, MirrorError> {
    let mut files: Vec<PathBuf> = vec![etc_apt.join("sources.list")];
    if let Ok(dir) = std::fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut more: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    let mut sources = Vec::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        if file.extension().is_some_and(|e| e == "sources") {
            sources.extend(parse_deb822(&text));
        } else {
            sources.extend(parse_one_line(&text));
        }
    }
    pick(&sources, suite).ok_or_else(|| MirrorError::NotFound {
        suite: suite.to_owned(),
        searched: files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Picks the first Debian archive entry serving `suite`.
pub fn pick(sources: &[Source], suite: &str) -> Option<String> {
    sources
        .iter()
        .find(|s| s.suites.iter().any(|x| x == suite) && looks_like_debian_archive(&s.uri))
        .map(|s| s.uri.trim_end_matches('/').to_owned())
}

/// Security archives and third-party repositories never carry the plain suite
/// in practice, but be explicit: the path must end in `/debian` (the archive
/// layout every Debian mirror and snapshot uses) and not be a security archive.
fn looks_like_debian_archive(uri: &str) -> bool {
    let u = uri.trim_end_matches('/');
    !u.contains("security") && (u.ends_with("/debian") || u.contains("/archive/debian/"))
}

/// Parses one-line style entries (`deb [opts] URI SUITE COMPONENTS...`).
pub fn parse_one_line(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            continue;
        }
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            // Options may contain spaces: skip up to the closing bracket.
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push(Source {
                uri: uri.to_owned(),
                suites: vec![suite.to_owned()],
            });
        }
    }
    out
}

/// Parses deb822 style stanzas (`Types:`, `URIs:`, `Suites:`, `Enabled:`).
pub fn parse_deb822(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut types = Vec::new();
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut enabled = true;
        let mut last_key = String::new();
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (key, value) = if line.starts_with([' ', '\t']) {
                (last_key.clone(), line.trim())
            } else if let Some((k, v)) = line.split_once(':') {
                last_key = k.trim().to_ascii_lowercase();
                (last_key.clone(), v.trim())
            } else {
                continue;
            };
            let words = value.split_whitespace().map(str::to_owned);
            match key.as_str() {
                "types" => types.extend(words),
                "uris" => uris.extend(words),
                "suites" => suites.extend(words),
                "enabled" => enabled = !value.eq_ignore_ascii_case("no"),
                _ => {}
            }
        }
        if enabled && types.iter().any(|t| t == "deb") {
            out.extend(uris.into_iter().map(|uri| Source {
                uri,
                suites: suites.clone(),
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_entries() {
        let text = "\
# comment
deb http://mirror.example.org/debian bookworm main contrib
deb-src http://src.example.org/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://opt.example.org/debian/ trixie main # tail
deb http://security.example.org/debian-security bookworm-security main
";
        let s = parse_one_line(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].uri, "http://opt.example.org/debian/");
        assert_eq!(s[1].suites, ["trixie"]);
        assert_eq!(pick(&s, "bookworm").unwrap(), "http://mirror.example.org/debian");
        assert_eq!(pick(&s, "trixie").unwrap(), "http://opt.example.org/debian");
        assert_eq!(pick(&s, "sid"), None);
    }

    #[test]
    fn deb822_entries() {
        let text = "\
Types: deb
# http://snapshot.example.org/archive/debian/20250520T000000Z
URIs: http://mirror.example.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example.org/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example.org/debian
Suites: trixie

Types: deb-src deb
URIs:
 http://multi.example.org/debian
 http://other.example.org/debian
Suites: sid
";
        let s = parse_deb822(text);
        assert_eq!(s.len(), 4);
        assert_eq!(pick(&s, "bookworm").unwrap(), "http://mirror.example.org/debian");
        assert_eq!(pick(&s, "bookworm-security"), None);
        assert_eq!(pick(&s, "trixie"), None);
        assert_eq!(pick(&s, "sid").unwrap(), "http://multi.example.org/debian");
    }

    #[test]
    fn third_party_repos_are_ignored() {
        let text = "Types: deb\nURIs: https://vendor.example.org/apt\nSuites: bookworm\n";
        assert_eq!(pick(&parse_deb822(text), "bookworm"), None);
    }

    #[test]
    fn explicit_urls() {
        assert_eq!(
            check_url("http://m.example.org/debian/").unwrap(),
            "http://m.example.org/debian"
        );
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("http://x/$(reboot)").is_err());
    }

    #[test]
    fn reads_a_host_tree() {
        let dir = std::env::temp_dir().join(format!("dv-mirror-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sources.list.d")).unwrap();
        std::fs::write(
            dir.join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://m.example.org/debian\nSuites: bookworm\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("sources.list.d/x.list.disabled"),
            "deb http://no.example.org/debian bookworm main\n",
        )
        .unwrap();
        assert_eq!(from_host(&dir, "bookworm").unwrap(), "http://m.example.org/debian");
        let err = from_host(&dir, "trixie").unwrap_err();
        assert!(err.to_string().contains("trixie"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
