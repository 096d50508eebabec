//! The key and certificate RAUC bundles are signed with, and the keyring
//! (CA certificates) the node verifies them against.
//!
//! Without flags the builder uses a development CA and signing certificate
//! that it generates once into `<cache>/signing/` (never into the
//! repository) with the openssl CLI. `--signing-cert`, `--signing-key` and
//! `--keyring` select a production key instead; the certificate and key may
//! be PKCS#11 URIs, which are passed through to `rauc bundle` as they are
//! (RAUC reads `RAUC_PKCS11_MODULE` and `RAUC_PKCS11_PIN` from the environment).
//!
//! The node's system.conf asks for `check-purpose=codesign`: a signing
//! certificate must carry the extended key usage codeSigning.

use std::path::{Path, PathBuf};

use crate::cmd::{self, StepError, command, io, tool};

/// Days the development CA and signing certificate are valid.
const DEV_DAYS: &str = "3650";

/// What signs a bundle and what verifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signing {
    /// Signing certificate: a PEM file path or a `pkcs11:` URI.
    pub cert: String,
    /// Signing key: a PEM file path or a `pkcs11:` URI.
    pub key: String,
    /// PEM file with the CA certificate(s) the node trusts (its keyring).
    pub keyring: PathBuf,
    /// True for the builder's own development CA.
    pub development: bool,
}

/// Errors choosing or making signing material.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// Only some of the production flags were given.
    #[error(
        "--signing-cert, --signing-key and --keyring go together (given: {given}); pass all three for a production key, or none for the development CA"
    )]
    Incomplete {
        /// The flags that were given.
        given: String,
    },
    /// A flag names a file that does not exist.
    #[error("{flag} {value}: no such file (give a PEM file or a pkcs11: URI)")]
    Missing {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
    },
    /// The keyring holds no certificate.
    #[error("--keyring {path}: no PEM certificate in it")]
    EmptyKeyring {
        /// The keyring file.
        path: PathBuf,
    },
    /// openssl or a file operation failed.
    #[error(transparent)]
    Step(#[from] StepError),
}

/// The production flags as given on the command line.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    /// `--signing-cert`
    pub cert: Option<String>,
    /// `--signing-key`
    pub key: Option<String>,
    /// `--keyring`
    pub keyring: Option<PathBuf>,
}

/// Picks the production key when all three flags are given, else the
/// development CA in `cache` (made on first use).
pub fn resolve(flags: &Flags, cache: &Path) -> Result<Signing, SigningError> {
    match (&flags.cert, &flags.key, &flags.keyring) {
        (None, None, None) => development(cache),
        (Some(cert), Some(key), Some(keyring)) => {
            check_source("--signing-cert", cert)?;
            check_source("--signing-key", key)?;
            let text = std::fs::read_to_string(keyring).map_err(|_| SigningError::Missing {
                flag: "--keyring",
                value: keyring.display().to_string(),
            })?;
            if !text.contains("-----BEGIN CERTIFICATE-----") {
                return Err(SigningError::EmptyKeyring { path: keyring.clone() });
            }
            Ok(Signing {
                cert: cert.clone(),
                key: key.clone(),
                keyring: keyring.clone(),
                development: false,
            })
        }
        _ => {
            let given: Vec<&str> = [
                ("--signing-cert", flags.cert.is_some()),
                ("--signing-key", flags.key.is_some()),
                ("--keyring", flags.keyring.is_some()),
            ]
            .iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| *name)
            .collect();
            Err(SigningError::Incomplete {
                given: given.join(", "),
            })
        }
    }
}

/// A PKCS#11 URI is passed through; anything else must be a file.
fn check_source(flag: &'static str, value: &str) -> Result<(), SigningError> {
    if value.starts_with("pkcs11:") || Path::new(value).is_file() {
        Ok(())
    } else {
        Err(SigningError::Missing {
            flag,
            value: value.to_owned(),
        })
    }
}

/// The development CA and signing certificate in `<cache>/signing/`,
/// generated on first use (into a temporary directory renamed into place,
/// so an interrupted build never leaves half a set) and reused afterwards.
pub fn development(cache: &Path) -> Result<Signing, SigningError> {
    let dir = cache.join("signing");
    let files = DevFiles::in_dir(&dir);
    if !files.complete() {
        std::fs::create_dir_all(cache).map_err(io("Creating", cache))?;
        let tmp = cache.join(format!("signing.partial-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io("Removing", &tmp))?;
        }
        create_private_dir(&tmp)?;
        generate(&DevFiles::in_dir(&tmp), &tmp)?;
        if dir.exists() && !files.complete() {
            // An incomplete set from an older builder: replace it.
            std::fs::remove_dir_all(&dir).map_err(io("Removing incomplete", &dir))?;
        }
        if let Err(e) = std::fs::rename(&tmp, &dir) {
            // A build running beside this one made the set first: use theirs.
            std::fs::remove_dir_all(&tmp).map_err(io("Removing", &tmp))?;
            if !files.complete() {
                return Err(io("Renaming", &tmp)(e).into());
            }
        }
    }
    Ok(Signing {
        cert: files.signing_cert.to_string_lossy().into_owned(),
        key: files.signing_key.to_string_lossy().into_owned(),
        keyring: files.ca_cert,
        development: true,
    })
}

struct DevFiles {
    ca_key: PathBuf,
    ca_cert: PathBuf,
    signing_key: PathBuf,
    signing_cert: PathBuf,
}

impl DevFiles {
    fn in_dir(dir: &Path) -> Self {
        Self {
            ca_key: dir.join("ca.key.pem"),
            ca_cert: dir.join("ca.cert.pem"),
            signing_key: dir.join("signing.key.pem"),
            signing_cert: dir.join("signing.cert.pem"),
        }
    }

    fn complete(&self) -> bool {
        [&self.ca_key, &self.ca_cert, &self.signing_key, &self.signing_cert]
            .iter()
            .all(|p| p.is_file())
    }
}

fn create_private_dir(dir: &Path) -> Result<(), SigningError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(io("Creating", dir))?;
    Ok(())
}

/// An EC P-256 key, a self-signed CA and a codeSigning certificate it issues.
fn generate(f: &DevFiles, dir: &Path) -> Result<(), SigningError> {
    let openssl = |what: &str, args: &[&std::ffi::OsStr]| {
        cmd::run(&mut command("openssl", args)).map_err(tool(format!("{what} (openssl)")))
    };
    for key in [&f.ca_key, &f.signing_key] {
        openssl(
            "Generating a development key",
            &[
                "genpkey".as_ref(),
                "-algorithm".as_ref(),
                "EC".as_ref(),
                "-pkeyopt".as_ref(),
                "ec_paramgen_curve:P-256".as_ref(),
                "-out".as_ref(),
                key.as_os_str(),
            ],
        )?;
    }
    openssl(
        "Making the development CA certificate",
        &[
            "req".as_ref(),
            "-x509".as_ref(),
            "-new".as_ref(),
            "-key".as_ref(),
            f.ca_key.as_os_str(),
            "-subj".as_ref(),
            "/O=DebVisor/CN=DebVisor development update CA".as_ref(),
            "-days".as_ref(),
            DEV_DAYS.as_ref(),
            "-addext".as_ref(),
            "basicConstraints=critical,CA:TRUE".as_ref(),
            "-addext".as_ref(),
            "keyUsage=critical,keyCertSign,cRLSign".as_ref(),
            "-out".as_ref(),
            f.ca_cert.as_os_str(),
        ],
    )?;
    let csr = dir.join("signing.csr");
    openssl(
        "Making the development signing request",
        &[
            "req".as_ref(),
            "-new".as_ref(),
            "-key".as_ref(),
            f.signing_key.as_os_str(),
            "-subj".as_ref(),
            "/O=DebVisor/CN=DebVisor development bundle signing".as_ref(),
            "-out".as_ref(),
            csr.as_os_str(),
        ],
    )?;
    let ext = dir.join("signing.ext");
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=codeSigning\n\
         subjectKeyIdentifier=hash\n\
         authorityKeyIdentifier=keyid\n",
    )
    .map_err(io("Writing", &ext))?;
    let serial = format!("0x{}", hex::encode(random_serial()));
    openssl(
        "Issuing the development signing certificate",
        &[
            "x509".as_ref(),
            "-req".as_ref(),
            "-in".as_ref(),
            csr.as_os_str(),
            "-CA".as_ref(),
            f.ca_cert.as_os_str(),
            "-CAkey".as_ref(),
            f.ca_key.as_os_str(),
            "-set_serial".as_ref(),
            serial.as_ref(),
            "-days".as_ref(),
            DEV_DAYS.as_ref(),
            "-extfile".as_ref(),
            ext.as_os_str(),
            "-out".as_ref(),
            f.signing_cert.as_os_str(),
        ],
    )?;
    for p in [&csr, &ext] {
        std::fs::remove_file(p).map_err(io("Removing", p))?;
    }
    Ok(())
}

/// 8 bytes from the kernel's random source, first bit clear (positive serial).
fn random_serial() -> [u8; 8] {
    use std::io::Read;
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    if b == [0u8; 8] {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        b = nanos.to_be_bytes();
    }
    b[0] &= 0x7f;
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_production_flags_are_named() {
        let flags = Flags {
            cert: Some("/x.pem".into()),
            key: None,
            keyring: Some("/k.pem".into()),
        };
        let err = resolve(&flags, Path::new("/nonexistent")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("given: --signing-cert, --keyring"), "{msg}");
    }

    #[test]
    fn production_files_are_checked_and_pkcs11_passes() {
        let dir = std::env::temp_dir().join(format!("dv-signing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let keyring = dir.join("keyring.pem");
        std::fs::write(
            &keyring,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let flags = Flags {
            cert: Some("pkcs11:token=debvisor;object=signing".into()),
            key: Some("/no/such/key.pem".into()),
            keyring: Some(keyring.clone()),
        };
        let err = resolve(&flags, &dir).unwrap_err();
        assert!(err.to_string().contains("--signing-key /no/such/key.pem"), "{err}");
        let flags = Flags {
            key: Some("pkcs11:token=debvisor;object=signing;type=private".into()),
            ..flags
        };
        let s = resolve(&flags, &dir).unwrap();
        assert!(!s.development);
        assert_eq!(s.keyring, keyring);
        std::fs::write(&keyring, "not a certificate\n").unwrap();
        assert!(matches!(resolve(&flags, &dir), Err(SigningError::EmptyKeyring { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
