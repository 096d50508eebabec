//! Slot images as RAUC's adaptive mode (block-hash-index) sees them: 4 KiB
//! chunks, looked up by hash in the slots on the node, written only where
//! the target slot holds something else at that offset (RAUC 1.8 writes a
//! chunk "lazily": it reads the target first and skips an equal chunk).

use std::collections::HashSet;
use std::io::Read as _;
use std::path::Path;

use anyhow::{Context as _, Result};

/// RAUC's block-hash-index chunk.
pub(super) const CHUNK: usize = 4096;

/// How many of `new`'s chunks are found anywhere in `old` (by SHA-256, as
/// RAUC's hash index looks them up): (chunks of `new`, found).
pub(super) fn chunks_found(new: &Path, old: &[&Path]) -> Result<(u64, u64)> {
    let mut have: HashSet<[u8; 32]> = HashSet::new();
    for p in old {
        each_chunk(p, |h| {
            have.insert(h);
        })?;
    }
    let (mut total, mut found) = (0u64, 0u64);
    each_chunk(new, |h| {
        total += 1;
        found += u64::from(have.contains(&h));
    })?;
    Ok((total, found))
}

fn each_chunk(path: &Path, mut f: impl FnMut([u8; 32])) -> Result<()> {
    use sha2::Digest;
    let mut file = std::io::BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(path).with_context(|| format!("Cannot open {}", path.display()))?,
    );
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut n = 0;
        while n < CHUNK {
            let got = file.read(&mut buf[n..])?;
            if got == 0 {
                break;
            }
            n += got;
        }
        if n == 0 {
            return Ok(());
        }
        buf[n..].fill(0);
        f(sha2::Sha256::digest(&buf).into());
        if n < CHUNK {
            return Ok(());
        }
    }
}

/// The bytes RAUC writes when it installs `new` into a slot that holds
/// `held`: the chunks of `new` that differ from `held` at the same offset.
pub(super) fn differing_bytes(new: &Path, held: &Path) -> Result<u64> {
    let mut old = Vec::new();
    each_chunk(held, |h| old.push(h))?;
    let mut i = 0;
    let mut differ = 0u64;
    each_chunk(new, |h| {
        differ += u64::from(old.get(i) != Some(&h));
        i += 1;
    })?;
    Ok(differ * CHUNK as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_found_anywhere_and_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = |b: u8| vec![b; CHUNK];
        let old = dir.path().join("old");
        let new = dir.path().join("new");
        std::fs::write(&old, [chunk(1), chunk(2), chunk(3)].concat()).unwrap();
        // Shifted by one chunk, one changed, one more at the end.
        std::fs::write(&new, [chunk(9), chunk(1), chunk(2), chunk(4)].concat()).unwrap();
        assert_eq!(chunks_found(&new, &[&old]).unwrap(), (4, 2));
        assert_eq!(differing_bytes(&new, &old).unwrap(), 4 * CHUNK as u64);
        assert_eq!(differing_bytes(&old, &old).unwrap(), 0);
        // A short tail chunk is padded with zeros, as in RAUC's index.
        std::fs::write(&new, [chunk(1), chunk(2), vec![3u8; 100]].concat()).unwrap();
        assert_eq!(differing_bytes(&new, &old).unwrap(), CHUNK as u64);
    }
}
