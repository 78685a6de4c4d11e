//! After a session is created, push, reads, finalize and reset allocate nothing: checked with
//! a global allocator that counts every allocation made on this test's thread.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use msclam::{random_weights, synthetic_slide};
use msclam_engine::format::ModelWriter;
use msclam_engine::statistics::EmbeddingStatistics;
use msclam_engine::{Isa, Model, ModelConfig, ModelSize, SessionOptions, SlideSession};

struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static CALLS: Cell<usize> = const { Cell::new(0) };
}

fn note_call() {
    // `try_with`: the thread-local may already be gone while a thread shuts down.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = CALLS.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: every method forwards to the system allocator unchanged; counting touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_call();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_call();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_call();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_call();
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `f` and returns how many allocator calls it made on this thread.
fn allocations_during(f: impl FnOnce()) -> usize {
    CALLS.with(|c| c.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    CALLS.with(|c| c.get())
}

#[test]
fn the_counter_sees_allocations() {
    // The instrument works: a Vec allocates and frees.
    let n = allocations_during(|| drop(std::hint::black_box(vec![1u8; 100])));
    assert_eq!(n, 2);
}

#[test]
fn streaming_thousands_of_tiles_allocates_nothing() {
    for config in [
        ModelConfig::ms_clam(ModelSize::Small),
        ModelConfig::clam_sb(ModelSize::Tiny),
    ] {
        let d = config.input_dim;
        let total = 1 + 7 * 20 + 64 * 20 + 1000 * 3;
        let (emb, coords, _) = synthetic_slide(d, total, 0.1, 2);
        let statistics =
            EmbeddingStatistics::fit::<msclam_engine::Error>(d, 1, |_| Ok(emb.clone())).unwrap();
        for (dtype, bf16_dot, with_statistics) in common::WEIGHT_VARIANTS {
            let weights = random_weights(config, 1);
            let mut writer = ModelWriter::new(&weights).matrix_dtype(dtype);
            if with_statistics {
                writer = writer.embedding_statistics(statistics.clone());
            }
            let bytes = writer.to_bytes().unwrap();
            let model = std::sync::Arc::new(Model::from_bytes(&bytes).unwrap());
            for isa in Isa::all_supported() {
                let options = SessionOptions {
                    isa,
                    threads: 1,
                    bf16_dot,
                    ..SessionOptions::default()
                };
                let mut session =
                    SlideSession::with_options(model.clone(), total, options).unwrap();
                let mut checksum = 0.0f64;
                let calls = allocations_during(|| {
                    for _slide in 0..2 {
                        let mut start = 0;
                        for (size, repeats) in [(1usize, 1usize), (7, 20), (64, 20), (1000, 3)] {
                            for _ in 0..repeats {
                                let end = start + size;
                                let pushed = session
                                    .push(&emb[start * d..end * d], Some(&coords[start..end]))
                                    .unwrap();
                                checksum += pushed.slide_tumor_probability.unwrap_or(0.0) as f64;
                                checksum += session.tile_probabilities()[start] as f64;
                                checksum += session.attention_logits()[end - 1] as f64;
                                checksum += session.slide_probabilities().unwrap()[0] as f64;
                                checksum +=
                                    pushed.out_of_distribution_fraction.unwrap_or(0.0) as f64;
                                start = end;
                            }
                        }
                        // A rejected push allocates nothing either (its error has no heap data).
                        assert!(session.push(&emb[..d], Some(&coords[..1])).is_err());
                        let result = session.finalize().unwrap();
                        checksum += result.attention.iter().map(|a| *a as f64).sum::<f64>();
                        checksum += result.tumor_tiles as f64;
                        session.reset();
                    }
                });
                assert_eq!(
                    calls, 0,
                    "{isa:?}, {dtype:?} (dot {bf16_dot}, statistics {with_statistics}): {calls} allocator calls while streaming"
                );
                assert!(checksum.is_finite());
            }
        }
    }
}

#[test]
fn a_session_in_a_caller_buffer_allocates_nothing_even_when_created() {
    let config = ModelConfig::ms_clam(ModelSize::Tiny);
    let bytes = ModelWriter::new(&random_weights(config, 3))
        .to_bytes()
        .unwrap();
    let model = std::sync::Arc::new(Model::from_bytes(&bytes).unwrap());
    let (emb, _, _) = synthetic_slide(config.input_dim, 500, 0.1, 4);
    let needed = SlideSession::memory_bytes(&model, 500).unwrap();
    let mut arena = vec![0u8; needed + 63];
    let calls = allocations_during(|| {
        let mut session = SlideSession::in_buffer(model.clone(), 500, &mut arena).unwrap();
        for strip in emb.chunks(config.input_dim * 50) {
            session.push(strip, None).unwrap();
        }
        assert_eq!(session.finalize().unwrap().attention.len(), 500);
    });
    assert_eq!(calls, 0);
}
