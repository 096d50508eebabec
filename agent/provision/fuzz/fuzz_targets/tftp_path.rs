//! Any file name in a TFTP read request: it resolves to a plain file of the
//! root or is refused; it never leaves the root.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use debvisor_provision::tftp::resolve;
use libfuzzer_sys::fuzz_target;

fn root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("debvisor-fuzz-tftp-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for f in ["snponly.efi", "undionly.kpxe", "sub/inner.efi"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let root = root();
    if let Ok(file) = resolve(root, Path::new(OsStr::from_bytes(data))) {
        assert_eq!(file.parent(), Some(root.as_path()), "{file:?} is outside the root");
        assert!(file.is_file());
    }
});
