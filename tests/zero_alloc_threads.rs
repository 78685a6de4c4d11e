//! A session with worker threads allocates nothing per push either: every allocation of the
//! process (worker threads included) is counted while slides stream. One test in its own
//! binary, so no other test allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

mod common;

use msclam::{random_weights, synthetic_slide};
use msclam_engine::statistics::EmbeddingStatistics;
use msclam_engine::{
    format::ModelWriter, Isa, Model, ModelConfig, ModelSize, SessionOptions, SlideSession,
    SmallStripSplit,
};

struct CountingAllocator;

static COUNTING: AtomicBool = AtomicBool::new(false);
static CALLS: AtomicUsize = AtomicUsize::new(0);

fn note_call() {
    if COUNTING.load(Ordering::SeqCst) {
        CALLS.fetch_add(1, Ordering::SeqCst);
    }
}

// SAFETY: every method forwards to the system allocator with the caller's arguments.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_call();
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_call();
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_call();
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_call();
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

#[test]
fn streaming_with_worker_threads_allocates_nothing_in_any_thread() {
    let config = ModelConfig::ms_clam(ModelSize::Small);
    let d = config.input_dim;
    let weights = random_weights(config, 1);
    // Strips of one tile and of 64 (one block: split between the threads by output panels)
    // and of 700 (blocks taken by the threads).
    let total = 1 + 64 * 3 + 700 * 3;
    let (emb, _, _) = synthetic_slide(d, total, 0.1, 2);
    let statistics =
        EmbeddingStatistics::fit::<msclam_engine::Error>(d, 1, |_| Ok(emb.clone())).unwrap();
    for (dtype, bf16_dot, with_statistics) in common::WEIGHT_VARIANTS {
        let mut writer = ModelWriter::new(&weights).matrix_dtype(dtype);
        if with_statistics {
            writer = writer.embedding_statistics(statistics.clone());
        }
        let model = Arc::new(Model::from_bytes(&writer.to_bytes().unwrap()).unwrap());
        // Small strips split always, only back to back or while the workers poll, or never.
        let modes = [
            SmallStripSplit::Always,
            SmallStripSplit::WhenBackToBack,
            SmallStripSplit::Never,
        ];
        for (isa, small_strips) in Isa::all_supported()
            .into_iter()
            .flat_map(|isa| modes.map(|mode| (isa, mode)))
        {
            let options = SessionOptions {
                isa,
                threads: 3,
                bf16_dot,
                small_strips,
                ..SessionOptions::default()
            };
            let mut session = SlideSession::with_options(model.clone(), total, options).unwrap();
            let mut checksum = 0.0f64;
            COUNTING.store(true, Ordering::SeqCst);
            for _slide in 0..2 {
                let mut start = 0;
                for (size, repeats) in [(1usize, 1usize), (64, 3), (700, 3)] {
                    for _ in 0..repeats {
                        let end = start + size;
                        let pushed = session.push(&emb[start * d..end * d], None).unwrap();
                        checksum += pushed.slide_tumor_probability.unwrap_or(0.0) as f64;
                        start = end;
                    }
                }
                checksum += session.finalize().unwrap().tumor_tiles as f64;
                session.reset();
            }
            COUNTING.store(false, Ordering::SeqCst);
            let calls = CALLS.swap(0, Ordering::SeqCst);
            assert_eq!(
                calls, 0,
                "{isa:?}, {dtype:?} (dot {bf16_dot}, statistics {with_statistics}, small strips \
                 {small_strips:?}): {calls} allocator calls while streaming"
            );
            assert!(checksum.is_finite());
        }
    }
}
