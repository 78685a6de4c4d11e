//! Structure-aware `.mscl` fuzzing: start from a valid file (of each dtype and layout),
//! overwrite fields of the header, the tensor table or the metadata with values the input
//! chooses (often boundary values), then fix `file_bytes` and the checksum so that the
//! structural rules, not the checksum, decide.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use msclam_engine::format::{self, HEADER_BYTES};
use msclam_engine::Model;

fn files() -> &'static [Vec<u8>] {
    static FILES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FILES.get_or_init(msclam_fuzz::valid_files)
}

/// Values that sit on the edges of the rules.
const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    63,
    64,
    65,
    128,
    255,
    4096,
    65536,
    u32::MAX as u64,
    u64::MAX,
];

fuzz_target!(|data: &[u8]| {
    let Some((&choice, mut ops)) = data.split_first() else {
        return;
    };
    let files = files();
    let mut file = files[choice as usize % files.len()].clone();
    let structure_end = {
        let metadata = u64::from_le_bytes(file[72..80].try_into().unwrap()) as usize;
        let len = u64::from_le_bytes(file[80..88].try_into().unwrap()) as usize;
        metadata + len
    };
    // Each edit: [where: u16][kind][value...]; positions fall in the header, the table or
    // the metadata (or, with kind 3, the length of the file changes).
    while ops.len() >= 4 && !file.is_empty() {
        let at = u16::from_le_bytes([ops[0], ops[1]]) as usize
            % structure_end.max(HEADER_BYTES).min(file.len());
        let kind = ops[2];
        ops = &ops[3..];
        match kind % 5 {
            0 => {
                // A byte.
                file[at] = ops[0];
                ops = &ops[1..];
            }
            1 | 2 => {
                // A little-endian integer of 2, 4 or 8 bytes, often an edge value.
                let width = [2usize, 4, 8][ops[0] as usize % 3];
                let value = if kind % 5 == 1 {
                    INTERESTING[ops[0] as usize / 3 % INTERESTING.len()]
                } else {
                    let mut raw = [0u8; 8];
                    let n = ops.len().min(8);
                    raw[..n].copy_from_slice(&ops[..n]);
                    u64::from_le_bytes(raw)
                };
                ops = &ops[1.min(ops.len())..];
                let end = (at + width).min(file.len());
                let bytes = value.to_le_bytes();
                file[at..end].copy_from_slice(&bytes[..end - at]);
            }
            3 => {
                // Grow or shrink the file.
                let delta = ops[0] as usize * 8;
                ops = &ops[1..];
                if delta % 16 == 0 {
                    file.truncate(file.len().saturating_sub(delta));
                } else {
                    file.resize(file.len() + delta, 0);
                }
            }
            _ => {
                // Copy one table entry over another (aliasing, duplicates).
                let count = match file.get(56..60) {
                    Some(c) => u32::from_le_bytes(c.try_into().unwrap()) as usize,
                    None => 0,
                };
                let count = count
                    .min(12)
                    .min(file.len().saturating_sub(HEADER_BYTES) / 64);
                if count > 1 {
                    let from = HEADER_BYTES + (ops[0] as usize % count) * 64;
                    let to = HEADER_BYTES + (at % count) * 64;
                    let entry: Vec<u8> = file[from..from + 64].to_vec();
                    file[to..to + 64].copy_from_slice(&entry);
                }
                ops = &ops[1..];
            }
        }
    }
    if file.len() >= HEADER_BYTES {
        let len = file.len() as u64;
        file[16..24].copy_from_slice(&len.to_le_bytes());
        format::reseal(&mut file);
    }
    if let Ok(model) = Model::from_bytes(&file) {
        msclam_fuzz::score_a_few_tiles(Arc::new(model));
    }
});
