//! The bundle step with the host's real RAUC and openssl (qa/setup-host.sh
//! installs both): development CA made once and reused, a verity bundle of a
//! small slot image signed with it, verified against the node's system.conf,
//! and refused with another CA's keyring.

use std::path::{Path, PathBuf};
use std::process::Command;

use debvisor_image::bundle::{self, Contents};
use debvisor_image::progress::Progress;
use debvisor_image::signing;

fn require(tool: &str) {
    let ok = Command::new(tool).arg("version").output().is_ok();
    assert!(
        ok,
        "{tool} is not installed: run qa/setup-host.sh (Debian packages rauc, openssl)"
    );
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("dv-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn slot_image(path: &Path) -> String {
    // 64 KiB of varied bytes: a multiple of 4096, as block-hash-index needs.
    let data: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(path, &data).unwrap();
    debvisor_image::manifest::artifact(path, |_| {}).unwrap().sha256
}

#[test]
fn signed_verity_bundle_verifies_with_the_node_config_only() {
    require("rauc");
    require("openssl");
    let tmp = TempDir::new("bundle");
    let cache = tmp.0.join("cache");
    let dev = signing::development(&cache).unwrap();
    assert!(dev.development);
    let first = std::fs::read(&dev.keyring).unwrap();
    // Reused, not regenerated.
    let again = signing::development(&cache).unwrap();
    assert_eq!(again, dev);
    assert_eq!(std::fs::read(&again.keyring).unwrap(), first);

    let slot = tmp.0.join("slot.img");
    let sha = slot_image(&slot);
    let work = tmp.0.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let out = tmp.0.join("update.raucb");
    let contents = Contents {
        compatible: "debvisor-test-x86_64",
        version: "0.1.1",
        description: "debvisor-test 0.1.1",
        build: "2026-01-01T00:00:00Z",
    };
    let mut progress = Progress::new(1);
    let step = progress.step("bundle");
    bundle::build(&slot, &work, &out, &contents, &dev, &step).unwrap();
    step.finish("");
    let (signer, image) = bundle::verify(&out, &work, &contents, &dev.keyring, &sha).unwrap();
    assert!(signer.contains("DebVisor development bundle signing"), "{signer}");
    assert_eq!(image.class, "rootfs");
    assert_eq!(image.size, 65536);
    assert_eq!(image.sha256, sha);
    assert_eq!(image.adaptive, ["block-hash-index"]);
    // The check leaves no scratch behind.
    assert!(!work.join("rauc-check").exists() && !work.join("bundle").exists());

    // A bundle that does not say what was built is refused.
    let other = Contents {
        version: "0.1.2",
        ..contents.clone()
    };
    let err = bundle::verify(&out, &work, &other, &dev.keyring, &sha).unwrap_err();
    assert!(err.to_string().contains("0.1.2"), "{err}");

    // Another CA's keyring does not verify it.
    let stranger = signing::development(&tmp.0.join("other-cache")).unwrap();
    let err = bundle::verify(&out, &work, &contents, &stranger.keyring, &sha).unwrap_err();
    let chain = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(chain.contains("does not verify"), "{chain}");
}

#[test]
fn unaligned_slot_is_refused_before_rauc_runs() {
    let tmp = TempDir::new("bundle-unaligned");
    let slot = tmp.0.join("slot.img");
    std::fs::write(&slot, vec![1u8; 5000]).unwrap();
    let s = signing::Signing {
        cert: "/nonexistent".into(),
        key: "/nonexistent".into(),
        keyring: "/nonexistent".into(),
        development: true,
    };
    let contents = Contents {
        compatible: "c",
        version: "1",
        description: "d",
        build: "b",
    };
    let mut progress = Progress::new(1);
    let step = progress.step("bundle");
    let err = bundle::build(&slot, &tmp.0, &tmp.0.join("u.raucb"), &contents, &s, &step).unwrap_err();
    assert!(err.to_string().contains("5000"), "{err}");
}
