//! Test variants of a recipe: the same image with another version, extra
//! marker files and masked units (`--version`, `--mark-file`, `--mask`).
//!
//! A variant changes nothing that goes into the base rootfs cache key, so it
//! reuses the cached base and costs the customisation, initramfs, squashfs,
//! disk and bundle steps of a build.

use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::recipe::{Recipe, RecipeError};

/// A file written into the image: `PATH=CONTENT` on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MarkFile {
    /// Absolute path in the image.
    pub path: String,
    /// One line of text (a newline is added).
    pub content: String,
}

/// Bad variant flags.
#[derive(Debug, thiserror::Error)]
pub enum VariantError {
    /// `--mark-file` is not `PATH=CONTENT` with an acceptable path.
    #[error("--mark-file {value:?}: {reason}")]
    MarkFile {
        /// The flag's value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `--version` or `--mask` broke a recipe rule (the source names it).
    #[error("Variant flags do not fit the recipe (--version sets image.version, --mask adds to systemd.mask)")]
    Recipe(#[from] RecipeError),
    /// A marker file could not be written.
    #[error("Writing marker file {path}")]
    Write {
        /// Path in the work tree.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl std::str::FromStr for MarkFile {
    type Err = VariantError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| VariantError::MarkFile {
            value: s.to_owned(),
            reason,
        };
        let (path, content) = s.split_once('=').ok_or_else(|| bad("use PATH=CONTENT"))?;
        let p = Path::new(path);
        if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(bad("PATH must be absolute and without '..'"));
        }
        if p.file_name().is_none() || path.ends_with('/') {
            return Err(bad("PATH must name a file"));
        }
        if path.chars().chain(content.chars()).any(char::is_control) {
            return Err(bad("PATH and CONTENT must be one line without control characters"));
        }
        Ok(MarkFile {
            path: path.to_owned(),
            content: content.to_owned(),
        })
    }
}

/// The variant options of one build.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Variant {
    /// Replaces `[image] version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Files written into the image after the overlays.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mark_files: Vec<MarkFile>,
    /// Units masked in addition to the recipe's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mask: Vec<String>,
}

impl Variant {
    /// True when the build is the recipe as written.
    pub fn is_empty(&self) -> bool {
        self.version.is_none() && self.mark_files.is_empty() && self.mask.is_empty()
    }

    /// Applies the version and masks to `recipe` and validates the result
    /// (the error names `image.version` or `systemd.mask` and the value).
    pub fn apply(&self, recipe: &mut Recipe) -> Result<(), VariantError> {
        if let Some(v) = &self.version {
            recipe.image.version = v.clone();
        }
        for unit in &self.mask {
            if !recipe.systemd.mask.contains(unit) {
                recipe.systemd.mask.push(unit.clone());
            }
        }
        recipe.validate()?;
        Ok(())
    }

    /// Writes the marker files into `root`, creating parent directories.
    pub fn write_marks(&self, root: &Path) -> Result<(), VariantError> {
        for m in &self.mark_files {
            let path = root.join(m.path.trim_start_matches('/'));
            let err = |source| VariantError::Write {
                path: path.clone(),
                source,
            };
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(err)?;
            }
            if path.is_symlink() {
                std::fs::remove_file(&path).map_err(err)?;
            }
            std::fs::write(&path, format!("{}\n", m.content)).map_err(err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_file_parses_and_rejects() {
        let m: MarkFile = "/etc/debvisor-marker=v2".parse().unwrap();
        assert_eq!(m.path, "/etc/debvisor-marker");
        assert_eq!(m.content, "v2");
        let m: MarkFile = "/etc/x=a=b".parse().unwrap();
        assert_eq!(m.content, "a=b");
        for bad in ["etc/x=1", "/etc/../x=1", "/etc/x", "/etc/=1", "/etc/x=a\nb"] {
            let err = bad.parse::<MarkFile>().unwrap_err();
            assert!(err.to_string().contains("--mark-file"), "{bad}: {err}");
        }
    }

    #[test]
    fn apply_sets_version_and_masks_and_validates() {
        let mut r = Recipe::parse(Path::new("/r/node.toml"), crate::recipe::tests::MINIMAL).unwrap();
        let v = Variant {
            version: Some("0.1.1".into()),
            mark_files: vec![],
            mask: vec!["debvisor-agent.service".into()],
        };
        v.apply(&mut r).unwrap();
        assert_eq!(r.image.version, "0.1.1");
        assert_eq!(r.systemd.mask, ["debvisor-agent.service"]);
        let bad = Variant {
            version: Some("1 0".into()),
            ..Variant::default()
        };
        let err = bad.apply(&mut r).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("image.version") && chain.contains("\"1 0\""), "{chain}");
        let bad = Variant {
            mask: vec!["nounit".into()],
            ..Variant::default()
        };
        let err = bad.apply(&mut r).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("systemd.mask"), "{chain}");
    }

    #[test]
    fn marks_are_written_under_the_root() {
        let root = std::env::temp_dir().join(format!("dv-variant-{}", std::process::id()));
        let v = Variant {
            mark_files: vec!["/etc/debvisor/marker=v2".parse().unwrap()],
            ..Variant::default()
        };
        v.write_marks(&root).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("etc/debvisor/marker")).unwrap(),
            "v2\n"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
