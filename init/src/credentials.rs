//! The admin credential, generated on first boot: never a fixed default.
//!
//! The password is shown once on the serial console; its argon2id hash is
//! kept for the console, and the same password becomes root's password for
//! the serial console.

use std::path::Path;

use argon2::password_hash::PasswordHasher;
use rand::seq::IndexedRandom;

use crate::pki::{PkiError, write_file};

/// Characters of generated passwords: no look-alikes (0/O, 1/l/I).
const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// A new random password: 20 characters, about 117 bits.
pub fn generate_password() -> String {
    let mut rng = rand::rng();
    (0..20)
        .map(|_| *ALPHABET.choose(&mut rng).expect("alphabet is not empty") as char)
        .collect()
}

/// Why the credential could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Hashing failed.
    #[error("Cannot hash the admin password: {0}")]
    Hash(String),
    /// Writing the hash failed.
    #[error(transparent)]
    Write(#[from] PkiError),
    /// Setting root's password failed.
    #[error("Cannot set root's password: {0}")]
    Chpasswd(String),
}

/// Returns `Some(password)` when it created a new admin credential at
/// `hash_path`, `None` when one already exists.
pub fn ensure_admin(hash_path: &Path, set_root_password: bool) -> Result<Option<String>, CredentialError> {
    if hash_path.exists() {
        return Ok(None);
    }
    let password = generate_password();
    let hash = argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map_err(|e| CredentialError::Hash(e.to_string()))?
        .to_string();
    if let Some(dir) = hash_path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    if set_root_password {
        set_root(&password)?;
    }
    write_file(hash_path, hash.as_bytes(), 0o600)?;
    Ok(Some(password))
}

fn set_root(password: &str) -> Result<(), CredentialError> {
    use std::io::Write;
    let mut child = std::process::Command::new("chpasswd")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| CredentialError::Chpasswd(e.to_string()))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(format!("root:{password}\n").as_bytes())
        .map_err(|e| CredentialError::Chpasswd(e.to_string()))?;
    let out = child
        .wait_with_output()
        .map_err(|e| CredentialError::Chpasswd(e.to_string()))?;
    if !out.status.success() {
        return Err(CredentialError::Chpasswd(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::PasswordVerifier;
    use argon2::password_hash::phc::PasswordHash;

    #[test]
    fn passwords_are_random_and_unambiguous() {
        let a = generate_password();
        let b = generate_password();
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| ALPHABET.contains(&c)));
    }

    #[test]
    fn creates_a_verifiable_hash_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console/admin.argon2");
        let pw = ensure_admin(&path, false).unwrap().expect("first call creates");
        let phc = std::fs::read_to_string(&path).unwrap();
        assert!(phc.starts_with("$argon2id$"));
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(
            argon2::Argon2::default()
                .verify_password(pw.as_bytes(), &parsed)
                .is_ok()
        );
        assert!(
            ensure_admin(&path, false).unwrap().is_none(),
            "second call keeps the first"
        );
    }
}
