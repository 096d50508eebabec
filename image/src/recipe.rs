//! Image recipes: the typed, validated TOML file that says what goes into an image.
//!
//! Every table rejects unknown keys, and [`Recipe::from_file`] validates the
//! values (names that end up in files, unit names, kernel arguments, overlay
//! paths) so later steps can pass them on without quoting worries.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors found while loading or validating a recipe.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The file could not be read.
    #[error("Cannot read recipe {path}")]
    Read {
        /// Recipe file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type (the source names the key).
    #[error("Invalid recipe {path}")]
    Parse {
        /// Recipe file.
        path: PathBuf,
        /// Parser error, naming the key and line.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is not acceptable.
    #[error("Invalid recipe {path}: {field} = {value:?}: {reason}")]
    Value {
        /// Recipe file.
        path: PathBuf,
        /// Dotted key, e.g. `debian.packages`.
        field: &'static str,
        /// Offending value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An overlay directory named by the recipe does not exist.
    #[error("Invalid recipe {path}: overlay directory {dir} does not exist")]
    MissingOverlay {
        /// Recipe file.
        path: PathBuf,
        /// Resolved overlay directory.
        dir: PathBuf,
    },
}

/// A whole recipe file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Identity of the image.
    pub image: ImageSection,
    /// What mmdebstrap installs.
    pub debian: DebianSection,
    /// Trees copied over the root file system.
    #[serde(default)]
    pub overlay: OverlaySection,
    /// Workspace binaries installed to /usr/bin.
    #[serde(default)]
    pub binaries: BinariesSection,
    /// Units enabled in the image.
    #[serde(default)]
    pub systemd: SystemdSection,
    /// Kernel command line additions.
    #[serde(default)]
    pub kernel: KernelSection,
    /// Initramfs contents.
    #[serde(default)]
    pub initramfs: InitramfsSection,
    /// Disk image geometry.
    #[serde(default)]
    pub disk: DiskSection,
    /// How the slot image is made.
    #[serde(default)]
    pub slot: SlotSection,
    /// Directory holding the recipe (overlay paths are relative to it).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Path the recipe was loaded from.
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[image]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    /// Image name, written as IMAGE_ID to os-release.
    pub name: String,
    /// Image version, written as IMAGE_VERSION to os-release.
    pub version: String,
    /// RAUC compatible string.
    pub compatible: String,
}

/// `[debian]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DebianSection {
    /// Debian suite, e.g. `bookworm`.
    pub suite: String,
    /// mmdebstrap variant.
    #[serde(default = "default_variant")]
    pub variant: String,
    /// Debian architecture.
    #[serde(default = "default_arch")]
    pub architecture: String,
    /// Archive components.
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// Packages installed on top of the variant (no recommends).
    pub packages: Vec<String>,
    /// dpkg `path-exclude` globs (documentation, locales...).
    #[serde(default)]
    pub path_exclude: Vec<String>,
    /// dpkg `path-include` globs that re-include excluded files.
    #[serde(default)]
    pub path_include: Vec<String>,
}

/// `[overlay]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OverlaySection {
    /// Directories, relative to the recipe file, copied over the root in order.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
}

/// `[binaries]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BinariesSection {
    /// Cargo package and binary names, built in release mode and installed to /usr/bin.
    #[serde(default)]
    pub names: Vec<String>,
}

/// `[systemd]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdSection {
    /// Units enabled with `systemctl --root enable`.
    #[serde(default)]
    pub enable: Vec<String>,
    /// Units masked with `systemctl --root mask` (jobs that make no sense on
    /// an immutable root, such as apt's timers).
    #[serde(default)]
    pub mask: Vec<String>,
}

/// Squashfs compressors that GRUB 2.06 can read (it loads the kernel and
/// initrd from inside the slot): no zstd, no lz4.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Fast to decompress, about 25% larger than xz; the default because
    /// every file the node reads from its root is decompressed on the way.
    #[default]
    Gzip,
    /// Smallest, slowest to decompress (costs seconds of boot under TCG).
    Xz,
    /// Fastest to decompress, largest.
    Lzo,
}

impl Compression {
    /// The name mksquashfs takes after `-comp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Lzo => "lzo",
        }
    }

    /// mksquashfs options after `-comp`. gzip at level 6 instead of
    /// mksquashfs's 9: on the node's root (Debian base, 620 MB) level 9
    /// took 118 s on two cores and level 6 19 s, for a slot 0.8% larger
    /// (180.2 against 181.6 MB).
    pub fn options(self) -> &'static [&'static str] {
        match self {
            Compression::Gzip => &["-Xcompression-level", "6"],
            Compression::Xz | Compression::Lzo => &[],
        }
    }
}

/// `[slot]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlotSection {
    /// The squashfs compressor.
    #[serde(default)]
    pub compression: Compression,
}

/// `[kernel]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSection {
    /// Extra kernel arguments appended to the fixed DebVisor ones.
    #[serde(default)]
    pub cmdline: Vec<String>,
}

/// `[initramfs]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InitramfsSection {
    /// Kernel modules added to the ones the boot chain needs.
    #[serde(default)]
    pub extra_modules: Vec<String>,
}

/// `[disk]`, all sizes in MiB.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSection {
    /// EFI system partition.
    #[serde(default = "default_esp")]
    pub esp_mib: u64,
    /// Each root slot (room for future growth of the slot image).
    #[serde(default = "default_root")]
    pub root_mib: u64,
    /// Initial data partition (grown to fill the disk on first boot).
    #[serde(default = "default_data")]
    pub data_mib: u64,
}

impl Default for DiskSection {
    fn default() -> Self {
        Self {
            esp_mib: default_esp(),
            root_mib: default_root(),
            data_mib: default_data(),
        }
    }
}

fn default_variant() -> String {
    "minbase".into()
}
fn default_arch() -> String {
    "amd64".into()
}
fn default_components() -> Vec<String> {
    vec!["main".into()]
}
fn default_esp() -> u64 {
    64
}
fn default_root() -> u64 {
    768
}
fn default_data() -> u64 {
    64
}

const VARIANTS: &[&str] = &[
    "extract",
    "custom",
    "essential",
    "apt",
    "required",
    "minbase",
    "buildd",
    "important",
    "debootstrap",
    "standard",
];

impl Recipe {
    /// Reads, parses and validates a recipe file.
    pub fn from_file(path: &Path) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
            path: path.to_owned(),
            source,
        })?;
        let recipe = Self::parse(path, &text)?;
        recipe.validate()?;
        recipe.check_paths()?;
        Ok(recipe)
    }

    /// Parses recipe text; `path` is used for messages and relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self, RecipeError> {
        let mut recipe: Recipe = toml::from_str(text).map_err(|source| RecipeError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        recipe.path = path.to_owned();
        recipe.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(recipe)
    }

    fn bad(&self, field: &'static str, value: &str, reason: &'static str) -> RecipeError {
        RecipeError::Value {
            path: self.path.clone(),
            field,
            value: value.to_owned(),
            reason,
        }
    }

    /// Checks every value against the rules of where it ends up.
    pub fn validate(&self) -> Result<(), RecipeError> {
        let check = |field, value: &str, ok: fn(&str) -> bool, reason| {
            if ok(value) {
                Ok(())
            } else {
                Err(self.bad(field, value, reason))
            }
        };
        check(
            "image.name",
            &self.image.name,
            is_ident,
            "use [A-Za-z0-9._-], starting with a letter or digit",
        )?;
        check(
            "image.version",
            &self.image.version,
            is_ident,
            "use [A-Za-z0-9._-], starting with a letter or digit",
        )?;
        check(
            "image.compatible",
            &self.image.compatible,
            is_ident,
            "use [A-Za-z0-9._-], starting with a letter or digit",
        )?;
        check("debian.suite", &self.debian.suite, is_lower_word, "use [a-z0-9-]")?;
        check(
            "debian.architecture",
            &self.debian.architecture,
            is_lower_word,
            "use [a-z0-9-]",
        )?;
        if !VARIANTS.contains(&self.debian.variant.as_str()) {
            return Err(self.bad("debian.variant", &self.debian.variant, "not an mmdebstrap variant"));
        }
        if self.debian.components.is_empty() {
            return Err(self.bad("debian.components", "", "name at least one component"));
        }
        for c in &self.debian.components {
            check("debian.components", c, is_lower_word, "use [a-z0-9-]")?;
        }
        if self.debian.packages.is_empty() {
            return Err(self.bad("debian.packages", "", "name at least one package"));
        }
        for p in &self.debian.packages {
            check("debian.packages", p, is_package_name, "not a Debian package name")?;
        }
        for g in self.debian.path_exclude.iter().chain(&self.debian.path_include) {
            check(
                "debian.path_exclude/path_include",
                g,
                is_glob,
                "must be an absolute path glob without spaces or quotes",
            )?;
        }
        for d in &self.overlay.dirs {
            let s = d.to_string_lossy();
            if d.as_os_str().is_empty() || s.contains('\n') {
                return Err(self.bad("overlay.dirs", &s, "must be a non-empty single-line path"));
            }
        }
        for b in &self.binaries.names {
            check("binaries.names", b, is_ident, "use [A-Za-z0-9._-]")?;
        }
        for (field, units) in [
            ("systemd.enable", &self.systemd.enable),
            ("systemd.mask", &self.systemd.mask),
        ] {
            for u in units {
                check(
                    field,
                    u,
                    is_unit_name,
                    "not a systemd unit name (name.service, name.timer, ...)",
                )?;
            }
        }
        for a in &self.kernel.cmdline {
            check(
                "kernel.cmdline",
                a,
                is_kernel_arg,
                "use [A-Za-z0-9._,:=/+-], one argument per string",
            )?;
        }
        for m in &self.initramfs.extra_modules {
            check("initramfs.extra_modules", m, is_ident, "not a module name")?;
        }
        let d = &self.disk;
        if d.esp_mib < 40 {
            return Err(self.bad("disk.esp_mib", &d.esp_mib.to_string(), "FAT32 needs at least 40 MiB"));
        }
        if d.root_mib < 64 {
            return Err(self.bad("disk.root_mib", &d.root_mib.to_string(), "must be at least 64 MiB"));
        }
        if d.data_mib < 16 {
            return Err(self.bad("disk.data_mib", &d.data_mib.to_string(), "must be at least 16 MiB"));
        }
        if d.esp_mib + 2 * d.root_mib + d.data_mib > 1024 * 1024 {
            return Err(self.bad("disk", "", "disk larger than 1 TiB"));
        }
        Ok(())
    }

    /// Checks that every overlay directory exists.
    pub fn check_paths(&self) -> Result<(), RecipeError> {
        for dir in self.overlay_dirs() {
            if !dir.is_dir() {
                return Err(RecipeError::MissingOverlay {
                    path: self.path.clone(),
                    dir,
                });
            }
        }
        Ok(())
    }

    /// Overlay directories resolved against the recipe's directory.
    pub fn overlay_dirs(&self) -> Vec<PathBuf> {
        self.overlay.dirs.iter().map(|d| self.base_dir.join(d)).collect()
    }
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn is_lower_word(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Debian policy 5.6.1: lower case letters, digits, `+ - .`, at least two
/// characters, starting with an alphanumeric.
fn is_package_name(s: &str) -> bool {
    s.len() >= 2
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

fn is_glob(s: &str) -> bool {
    s.starts_with('/')
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\' | '$' | '`'))
}

fn is_unit_name(s: &str) -> bool {
    const SUFFIXES: &[&str] = &[".service", ".socket", ".timer", ".target", ".path", ".mount", ".slice"];
    SUFFIXES.iter().any(|suf| {
        s.strip_suffix(suf).is_some_and(|stem| {
            !stem.is_empty()
                && stem
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | ':'))
        })
    })
}

fn is_kernel_arg(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ',' | ':' | '=' | '/' | '+' | '-'))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest valid recipe (also used by the variant tests).
    pub(crate) const MINIMAL: &str = r#"
[image]
name = "node"
version = "1.0"
compatible = "debvisor-node-x86_64"

[debian]
suite = "bookworm"
packages = ["systemd", "linux-image-amd64"]
"#;

    fn parse(text: &str) -> Result<Recipe, RecipeError> {
        let r = Recipe::parse(Path::new("/r/test.toml"), text)?;
        r.validate()?;
        Ok(r)
    }

    #[test]
    fn minimal_recipe_gets_defaults() {
        let r = parse(MINIMAL).unwrap();
        assert_eq!(r.debian.variant, "minbase");
        assert_eq!(r.debian.components, ["main"]);
        assert_eq!(r.disk.root_mib, 768);
        assert_eq!(r.base_dir, Path::new("/r"));
    }

    #[test]
    fn slot_compression_is_one_grub_reads() {
        assert_eq!(parse(MINIMAL).unwrap().slot.compression, Compression::Gzip);
        let xz = parse(&format!("{MINIMAL}\n[slot]\ncompression = \"xz\"\n")).unwrap();
        assert_eq!(xz.slot.compression.as_str(), "xz");
        let err = parse(&format!("{MINIMAL}\n[slot]\ncompression = \"zstd\"\n")).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("zstd") && chain.contains("gzip"), "{chain}");
    }

    #[test]
    fn masked_units_are_checked() {
        let err = parse(&format!("{MINIMAL}\n[systemd]\nmask = [\"../x\"]\n")).unwrap_err();
        assert!(err.to_string().contains("systemd.mask"), "{err}");
    }

    #[test]
    fn unknown_key_is_named_with_the_path() {
        let text = MINIMAL.replace("[debian]", "[debian]\npackagez = []");
        let err = parse(&text).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("/r/test.toml"), "{chain}");
        assert!(chain.contains("packagez"), "{chain}");
    }

    #[test]
    fn unknown_section_is_rejected() {
        let text = format!("{MINIMAL}\n[bogus]\nx = 1\n");
        let err = parse(&text).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("bogus"), "{chain}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("\"systemd\"", "\"Systemd Foo\"", "debian.packages"),
            ("suite = \"bookworm\"", "suite = \"Bookworm!\"", "debian.suite"),
            ("name = \"node\"", "name = \"a b\"", "image.name"),
        ];
        for (from, to, field) in cases {
            let err = parse(&MINIMAL.replace(from, to)).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
        let err = parse(&format!("{MINIMAL}\n[systemd]\nenable = [\"foo\"]\n")).unwrap_err();
        assert!(err.to_string().contains("\"foo\""), "{err}");
        let err = parse(&format!("{MINIMAL}\n[kernel]\ncmdline = [\"a b\"]\n")).unwrap_err();
        assert!(err.to_string().contains("kernel.cmdline"), "{err}");
        let err = parse(&format!("{MINIMAL}\n[disk]\nesp_mib = 8\n")).unwrap_err();
        assert!(err.to_string().contains("disk.esp_mib"), "{err}");
    }

    #[test]
    fn missing_overlay_dir_is_named() {
        let text = format!("{MINIMAL}\n[overlay]\ndirs = [\"no/such/dir\"]\n");
        let r = parse(&text).unwrap();
        let err = r.check_paths().unwrap_err();
        assert!(err.to_string().contains("/r/no/such/dir"), "{err}");
    }

    #[test]
    fn name_rules() {
        assert!(is_package_name("linux-image-amd64"));
        assert!(is_package_name("libstdc++6"));
        assert!(!is_package_name("a"));
        assert!(!is_package_name("-x"));
        assert!(is_unit_name("serial-getty@ttyS0.service"));
        assert!(!is_unit_name(".service"));
        assert!(is_kernel_arg("console=ttyS0,115200"));
        assert!(!is_kernel_arg("a;reboot"));
    }

    #[test]
    fn every_shipped_recipe_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Recipe::from_file(&path).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
                seen += 1;
            }
        }
        assert!(seen > 0, "no recipes in {}", dir.display());
    }
}
