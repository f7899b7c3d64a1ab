//! Whole hash maps read in batches: one `BPF_MAP_LOOKUP_BATCH` call per chunk of entries instead
//! of one `BPF_MAP_GET_NEXT_KEY` (and one lookup) per entry, for the walks podmapd repeats every
//! few seconds over maps that grow with the containers on the node (docs/decisions.md #43).
//!
//! aya has no batched lookups, so the command is issued here, at the syscall edge. A kernel
//! without it (before 5.6) answers EINVAL, and the map is walked key by key as before.

use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{HashMap, IterableMap, MapData};
use aya::Pod;

/// The kernel's `BPF_MAP_LOOKUP_BATCH` command number (`enum bpf_cmd` in linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per call: a hash map answers whole buckets, so a bucket longer than this
/// (ENOSPC) doubles it.
const CHUNK: usize = 1024;

/// The `batch` member of the kernel's `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of a hash map: in batches where the kernel can, else (or when a batch read
/// fails) key by key, an entry that fails to read skipped as aya's walk always did.
pub(crate) fn entries<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> Vec<(K, V)> {
    lookup_batches(map).unwrap_or_else(|_| map.iter().filter_map(Result::ok).collect())
}

/// Every entry of a hash map, read in batches. `Unsupported` when the kernel has no batched
/// lookup for it.
fn lookup_batches<K: Pod, V: Pod>(map: &impl IterableMap<K, V>) -> io::Result<Vec<(K, V)>> {
    let fd = map.map().fd().as_fd().as_raw_fd();
    let mut out = Vec::new();
    let mut chunk = CHUNK;
    // A hash map's position between calls is a bucket index (a u32); room for any map's.
    let (mut token_in, mut token_out) = ([0u8; 64], [0u8; 64]);
    let mut first = true;
    loop {
        let mut keys: Vec<K> = Vec::with_capacity(chunk);
        let mut values: Vec<V> = Vec::with_capacity(chunk);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the bpf syscall with an attr of the batch command's layout; the kernel writes at
        // most `count` keys and values into buffers of that capacity, and a token of at most
        // the map's key size (u32 for a hash map) into a 64-byte buffer.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let done = if rc < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // The last chunk: `count` says how many it holds.
                Some(libc::ENOENT) => true,
                Some(libc::ENOSPC) if chunk < 1 << 20 => {
                    chunk *= 2;
                    continue;
                }
                // 524 is the kernel's ENOTSUPP, what a map type without the command answers.
                Some(libc::EINVAL | libc::EOPNOTSUPP | 524) => {
                    return Err(io::Error::new(io::ErrorKind::Unsupported, e))
                }
                _ => return Err(e),
            }
        } else {
            false
        };
        let n = (attr.count as usize).min(chunk);
        // SAFETY: the kernel filled the first `n` keys and values (plain data, any bit pattern
        // valid: `Pod`).
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        out.extend(keys.into_iter().zip(values));
        if done {
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn map_with(n: u64) -> HashMap<MapData, u64, [u64; 2]> {
        let mut map = HashMap::<MapData, u64, [u64; 2]>::create(20_000, 0).expect("a hash map");
        for k in 0..n {
            map.insert(k * 7 + 1, [k, k * k], 0).expect("insert");
        }
        map
    }

    /// Every entry, each once, with its value, across many chunks and at the edges: empty, one,
    /// a chunk exactly, a chunk and one, and more than a chunk's worth many times over.
    #[test]
    fn reads_every_entry_once_in_batches() {
        if crate::testing::requires_root() {
            return;
        }
        for n in [0, 1, CHUNK as u64, CHUNK as u64 + 1, 10_000] {
            let map = map_with(n);
            let got = lookup_batches(&map).expect("the kernel has batched lookups");
            assert_eq!(got.len() as u64, n, "{n} entries");
            let by_key: BTreeMap<u64, [u64; 2]> = got.into_iter().collect();
            assert_eq!(by_key.len() as u64, n, "no key twice among {n}");
            let walked: BTreeMap<u64, [u64; 2]> = map.iter().map(Result::unwrap).collect();
            assert_eq!(by_key, walked, "the same entries as the key-by-key walk");
        }
    }
}
