//! Each structural rule of docs/FORMAT.md, one file per rule that breaks only that rule, sealed
//! with a recomputed checksum (and `file_bytes` updated), so that the rule itself rejects it.

use msclam::{random_weights, tiny_config};
use msclam_engine::format::{self, keys, ModelWriter, TensorId, ALIGNMENT, HEADER_BYTES};
use msclam_engine::{Error, Model};

const ENTRY: usize = format::TENSOR_ENTRY_BYTES;

fn tiny_file() -> Vec<u8> {
    ModelWriter::new(&random_weights(tiny_config(), 9))
        .metadata(keys::EMBEDDER_NAME, "resnet50_trunc")
        .unwrap()
        .metadata(keys::TILE_SIZE_PX, "256")
        .unwrap()
        .to_bytes()
        .unwrap()
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// `file` changed by `patch`, with `file_bytes` and the checksum made right again.
fn sealed(file: &[u8], patch: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut bad = file.to_vec();
    patch(&mut bad);
    let len = bad.len() as u64;
    put_u64(&mut bad, 16, len);
    format::reseal(&mut bad);
    bad
}

/// The loader's message for `file` changed by `patch` (it must be an invalid-model error).
fn rejection(file: &[u8], patch: impl Fn(&mut Vec<u8>)) -> String {
    match Model::from_bytes(&sealed(file, patch)) {
        Ok(_) => panic!("the changed file was accepted"),
        Err(e @ Error::InvalidModel { .. }) => e.to_string(),
        Err(e) => panic!("not a structural rejection: {e}"),
    }
}

/// Byte offset of the table entry of `id`.
fn entry_of(file: &[u8], id: TensorId) -> usize {
    let count = u32::from_le_bytes(file[56..60].try_into().unwrap()) as usize;
    let table = u64_at(file, 64) as usize;
    (0..count)
        .map(|i| table + i * ENTRY)
        .find(|&at| u16::from_le_bytes([file[at], file[at + 1]]) == id as u16)
        .unwrap()
}

#[test]
fn the_unchanged_file_and_a_resealed_copy_load() {
    let file = tiny_file();
    Model::from_bytes(&file).unwrap();
    Model::from_bytes(&sealed(&file, |_| {})).unwrap();
}

#[test]
fn reserved_header_bytes_must_be_zero() {
    let file = tiny_file();
    for at in [50, 51, 88, 100, 127] {
        let err = rejection(&file, |b| b[at] = 1);
        assert!(
            err.contains(&format!("reserved header byte {at} is not zero")),
            "{err}"
        );
    }
}

#[test]
fn reserved_table_entry_bytes_must_be_zero() {
    let file = tiny_file();
    let entry = entry_of(&file, TensorId::AttentionBBias);
    for offset in [12, 15, 48, 63] {
        let err = rejection(&file, |b| b[entry + offset] = 0x80);
        assert!(
            err.contains(&format!("reserved byte {offset} of tensor table entry")),
            "{err}"
        );
    }
}

#[test]
fn the_table_and_the_metadata_start_at_multiples_of_64() {
    let file = tiny_file();
    let err = rejection(&file, |b| put_u64(b, 64, HEADER_BYTES as u64 + 4));
    assert!(err.contains("tensor table starts at byte 132"), "{err}");
    let metadata = u64_at(&file, 72);
    let err = rejection(&file, |b| put_u64(b, 72, metadata + 8));
    assert!(
        err.contains("metadata section starts at byte") && err.contains("not a multiple of 64"),
        "{err}"
    );
}

#[test]
fn at_most_64_table_entries() {
    let file = tiny_file();
    let err = rejection(&file, |b| b[56..60].copy_from_slice(&65u32.to_le_bytes()));
    assert!(err.contains("65 tensor table entries; at most 64"), "{err}");
}

#[test]
fn tensor_data_may_not_overlap_another_section() {
    let file = tiny_file();
    let parsed = format::parse(&file).unwrap();
    let data_of = |id| parsed.tensor(id).unwrap().data.clone();
    // attention_b.bias and attention_a.bias have the same shape: alias one onto the other.
    let (a, b) = (
        data_of(TensorId::AttentionABias),
        data_of(TensorId::AttentionBBias),
    );
    let (from, onto) = if a.start > b.start {
        (TensorId::AttentionABias, b)
    } else {
        (TensorId::AttentionBBias, a)
    };
    let entry = entry_of(&file, from);
    let err = rejection(&file, |f| put_u64(f, entry + 16, onto.start as u64));
    assert!(err.contains("overlaps the data of tensor"), "{err}");

    // Onto the header (64-aligned, inside it), the table and the metadata section.
    let err = rejection(&file, |f| put_u64(f, entry + 16, 64));
    assert!(err.contains("overlaps the header"), "{err}");
    let table = u64_at(&file, 64);
    let err = rejection(&file, |f| put_u64(f, entry + 16, table + ALIGNMENT as u64));
    assert!(err.contains("overlaps the tensor table"), "{err}");
    let metadata = u64_at(&file, 72);
    let err = rejection(&file, |f| put_u64(f, entry + 16, metadata));
    assert!(
        err.contains("the metadata section") && err.contains("overlaps"),
        "{err}"
    );
}

#[test]
fn the_metadata_section_may_not_overlap_tensor_data() {
    let file = tiny_file();
    // The metadata section declared 64 bytes longer than the padding before the first tensor.
    let (at, len) = (u64_at(&file, 72), u64_at(&file, 80));
    let padded = (at + len).div_ceil(ALIGNMENT as u64) * ALIGNMENT as u64;
    let err = rejection(&file, |f| put_u64(f, 80, padded - at + ALIGNMENT as u64));
    assert!(err.contains("overlaps the metadata section"), "{err}");
}

#[test]
fn bytes_that_belong_to_no_section_are_rejected() {
    let file = tiny_file();
    // Trailing bytes counted in file_bytes (zeros, and then not zeros).
    for tail in [64usize, 100_000] {
        let err = rejection(&file, |b| b.resize(b.len() + tail, 0));
        assert!(
            err.contains("after") && err.contains("belong to no section"),
            "{err}"
        );
    }
    let err = rejection(&file, |b| b.push(7));
    assert!(err.contains("belong to no section"), "{err}");
    // A gap of a whole alignment unit between sections: the last tensor moved back 64 bytes.
    let parsed = format::parse(&file).unwrap();
    let last = parsed
        .tensors
        .iter()
        .flatten()
        .max_by_key(|e| e.data.start)
        .unwrap()
        .clone();
    let entry = entry_of(&file, last.id);
    let err = rejection(&file, |b| {
        let data = b[last.data.clone()].to_vec();
        b.resize(last.data.start + ALIGNMENT, 0);
        b.extend_from_slice(&data);
        put_u64(b, entry + 16, (last.data.start + ALIGNMENT) as u64);
    });
    assert!(
        err.contains("before the data of tensor") && err.contains("belong to no section"),
        "{err}"
    );
}

#[test]
fn padding_between_sections_must_be_zero() {
    let file = tiny_file();
    let metadata_end = (u64_at(&file, 72) + u64_at(&file, 80)) as usize;
    assert!(
        !metadata_end.is_multiple_of(ALIGNMENT),
        "the test file needs padding after its metadata"
    );
    let err = rejection(&file, |b| b[metadata_end] = 1);
    assert!(
        err.contains(&format!("padding byte {metadata_end}")),
        "{err}"
    );
}

#[test]
fn metadata_with_a_nul_byte_is_rejected_and_never_written() {
    let file = tiny_file();
    let parsed = format::parse(&file).unwrap();
    let (key, value) = parsed.metadata[0].clone();
    let err = rejection(&file, |b| b[key.start + 1] = 0);
    assert!(err.contains("metadata key contains a NUL byte"), "{err}");
    if !value.is_empty() {
        let err = rejection(&file, |b| b[value.end - 1] = 0);
        assert!(err.contains("metadata value contains a NUL byte"), "{err}");
    }
    let weights = random_weights(format::parse(&file).unwrap().config, 1);
    assert!(ModelWriter::new(&weights).metadata("a\0b", "x").is_err());
    assert!(ModelWriter::new(&weights).metadata("a", "x\0").is_err());
}

/// The metadata section's entries from `(key, value)` pairs, in the given order.
fn metadata_section(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in entries {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// `file` with its metadata section replaced by `section` holding `count` entries; the
/// metadata is the section before the tensors in files of the writer, so the tensors move.
fn with_metadata(file: &[u8], section: &[u8], count: usize) -> Vec<u8> {
    let parsed = format::parse(file).unwrap();
    let start = u64_at(file, 72) as usize;
    let first_tensor = parsed
        .tensors
        .iter()
        .flatten()
        .map(|e| e.data.start)
        .min()
        .unwrap();
    assert!(first_tensor > start, "the writer puts the metadata first");
    let new_first = (start + section.len()).div_ceil(ALIGNMENT) * ALIGNMENT;
    let mut out = file[..start].to_vec();
    out.extend_from_slice(section);
    out.resize(new_first, 0);
    out.extend_from_slice(&file[first_tensor..]);
    let shift = new_first as i64 - first_tensor as i64;
    put_u64(&mut out, 80, section.len() as u64);
    out[60..64].copy_from_slice(&(count as u32).to_le_bytes());
    let count = u32::from_le_bytes(out[56..60].try_into().unwrap()) as usize;
    for i in 0..count {
        let at = HEADER_BYTES + i * ENTRY;
        for field in [16, 32] {
            let v = u64_at(&out, at + field);
            if v != 0 {
                put_u64(&mut out, at + field, (v as i64 + shift) as u64);
            }
        }
    }
    sealed(&out, |_| {})
}

#[test]
fn metadata_in_any_order_is_read_and_looked_up_duplicates_rejected() {
    let file = tiny_file();
    // An older writer kept insertion order: keys out of order still load, and every lookup
    // finds its value.
    let entries: Vec<(&[u8], &[u8])> = vec![
        (b"zeta", b"last"),
        (b"tool.version", b"msclam-engine 0.1.0"),
        (b"alpha", b""),
        (b"embedder.name", b"resnet50_trunc"),
    ];
    let unsorted = with_metadata(&file, &metadata_section(&entries), entries.len());
    let model = Model::from_bytes(&unsorted).unwrap();
    let metadata = model.metadata();
    assert_eq!(metadata.len(), 4);
    for (k, v) in &entries {
        let key = std::str::from_utf8(k).unwrap();
        assert_eq!(metadata.get(key), Some(std::str::from_utf8(v).unwrap()));
    }
    assert_eq!(metadata.get("missing"), None);
    assert_eq!(metadata.get("alph"), None);
    // Listed in key order.
    let keys: Vec<&str> = metadata.iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["alpha", "embedder.name", "tool.version", "zeta"]);

    // A duplicate key, wherever it is.
    let dup: Vec<(&[u8], &[u8])> = vec![(b"b", b"1"), (b"a", b"2"), (b"b", b"3")];
    let err = Model::from_bytes(&with_metadata(&file, &metadata_section(&dup), 3))
        .unwrap_err()
        .to_string();
    assert!(err.contains("metadata key \"b\" appears twice"), "{err}");

    // The most entries a file may have, in reverse order: loads (n log n) and finds each.
    let names: Vec<String> = (0..format::MAX_METADATA_ENTRIES)
        .rev()
        .map(|i| format!("key.{i:05}"))
        .collect();
    let many: Vec<(&[u8], &[u8])> = names.iter().map(|k| (k.as_bytes(), &b"v"[..])).collect();
    let big = with_metadata(&file, &metadata_section(&many), many.len());
    let model = Model::from_bytes(&big).unwrap();
    for name in &names {
        assert_eq!(model.metadata().get(name), Some("v"));
    }
}

/// `file` with a 13th table entry for a tensor of unknown id 999 (a newer minor version's),
/// whose 16 bytes of data are appended at `data_at` (past the end, 64-aligned).
fn with_unknown_tensor(file: &[u8], data_at: impl Fn(usize) -> usize) -> Vec<u8> {
    let table_end = HEADER_BYTES + 12 * ENTRY;
    assert_eq!(
        u64_at(file, 72) as usize,
        table_end,
        "metadata right after the table"
    );
    let mut out = file[..table_end].to_vec();
    out.resize(table_end + ENTRY, 0);
    out.extend_from_slice(&file[table_end..]);
    out[56..60].copy_from_slice(&13u32.to_le_bytes());
    put_u64(&mut out, 72, (table_end + ENTRY) as u64);
    for i in 0..12 {
        let at = HEADER_BYTES + i * ENTRY;
        for field in [16, 32] {
            let v = u64_at(&out, at + field);
            if v != 0 {
                put_u64(&mut out, at + field, v + ENTRY as u64);
            }
        }
    }
    let at = data_at(out.len().div_ceil(ALIGNMENT) * ALIGNMENT);
    out.resize(at, 0);
    out.extend_from_slice(&[1u8; 16]);
    let entry = table_end;
    out[entry..entry + 2].copy_from_slice(&999u16.to_le_bytes());
    out[entry + 4..entry + 8].copy_from_slice(&4u32.to_le_bytes());
    out[entry + 8..entry + 12].copy_from_slice(&1u32.to_le_bytes());
    put_u64(&mut out, entry + 16, at as u64);
    put_u64(&mut out, entry + 24, 16);
    out[10..12].copy_from_slice(&1u16.to_le_bytes());
    sealed(&out, |_| {})
}

#[test]
fn a_tensor_of_a_newer_minor_version_is_skipped_but_its_bytes_count() {
    let file = tiny_file();
    let newer = with_unknown_tensor(&file, |end| end);
    let model = Model::from_bytes(&newer).unwrap();
    assert_eq!(model.format_version(), (1, 1));
    // The same tensor with a whole unit of padding before it: bytes in no section.
    let gap = with_unknown_tensor(&file, |end| end + ALIGNMENT);
    let err = Model::from_bytes(&gap).unwrap_err().to_string();
    assert!(
        err.contains("before the data of the tensor with unknown id 999"),
        "{err}"
    );
    // An unknown tensor's data outside the file is refused like any other.
    let entry = HEADER_BYTES + 12 * ENTRY;
    let err = rejection(&newer, |b| put_u64(b, entry + 16, 1 << 40));
    assert!(
        err.contains("unknown id 999") && err.contains("outside"),
        "{err}"
    );
}

#[test]
fn embedding_statistics_come_together_with_positive_scales_and_an_ordered_range() {
    let file = tiny_file();
    let config = format::parse(&file).unwrap().config;
    // D 6: 6 x 16 directions (any values do for the format: the loader checks the weights).
    let stats = msclam_engine::statistics::EmbeddingStatistics {
        mean: vec![0.5; 6],
        scale: vec![2.0; 6],
        components: vec![0.1; 6 * 16],
        component_terms: (0..17).flat_map(|c| [0.3, 1.0 + c as f32]).collect(),
        distance_range: [0.25, 4.0],
    };
    let with_stats = ModelWriter::new(&random_weights(config, 9))
        .embedding_statistics(stats)
        .to_bytes()
        .unwrap();
    let model = Model::from_bytes(&with_stats).unwrap();
    assert_eq!(model.format_version(), (1, 1));
    assert_eq!(
        model.embedding_statistics().unwrap().distance_range,
        [0.25, 4.0]
    );
    let parsed = format::parse(&with_stats).unwrap();
    let data = |id| parsed.tensor(id).unwrap().data.clone();

    let range = entry_of(&with_stats, TensorId::EmbeddingDistanceRange);
    let err = rejection(&with_stats, |b| {
        b[range..range + 2].copy_from_slice(&999u16.to_le_bytes())
    });
    assert!(
        err.contains("incomplete: embedding.distance_range is missing"),
        "{err}"
    );
    let scale = data(TensorId::EmbeddingScale);
    let err = rejection(&with_stats, |b| {
        b[scale.start..scale.start + 4].copy_from_slice(&0.0f32.to_le_bytes())
    });
    assert!(
        err.contains("embedding.scale has values out of range"),
        "{err}"
    );
    let terms = data(TensorId::EmbeddingComponentTerms);
    let err = rejection(&with_stats, |b| {
        b[terms.start + 4..terms.start + 8].copy_from_slice(&(-1.0f32).to_le_bytes())
    });
    assert!(
        err.contains("embedding.component_terms has values out of range"),
        "{err}"
    );
    let r = data(TensorId::EmbeddingDistanceRange);
    let err = rejection(&with_stats, |b| {
        b[r.start..r.start + 4].copy_from_slice(&5.0f32.to_le_bytes())
    });
    assert!(
        err.contains("embedding.distance_range has values out of range"),
        "{err}"
    );
}
