//! Engine throughput: tiles per second through a 1024/512/256 gated MS-CLAM session on one
//! thread, pushing strips of 1, 64 and 4096 tiles; and the matrix kernels per instruction set.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use msclam::{random_weights, synthetic_slide};
use msclam_engine::{format::ModelWriter, Isa, Model, ModelConfig, ModelSize, SlideSession};

fn model(config: ModelConfig) -> Arc<Model> {
    let bytes = ModelWriter::new(&random_weights(config, 1))
        .to_bytes()
        .unwrap();
    Arc::new(Model::from_bytes(&bytes).unwrap())
}

fn stream(session: &mut SlideSession<'_>, emb: &[f32], d: usize, chunk: usize) -> f32 {
    session.reset();
    let mut last = 0.0;
    for strip in emb.chunks(chunk * d) {
        last = session
            .push(strip, None)
            .unwrap()
            .slide_tumor_probability
            .unwrap();
    }
    last + session.finalize().unwrap().attention[0]
}

fn session_throughput(c: &mut Criterion) {
    let config = ModelConfig::ms_clam(ModelSize::Small);
    let model = model(config);
    let d = config.input_dim;
    let mut group = c.benchmark_group("session_push/1024x512x256_gated");
    group.sample_size(10);
    for (chunk, tiles) in [(1usize, 512usize), (64, 4096), (4096, 4096)] {
        let (emb, _, _) = synthetic_slide(d, tiles, 0.1, 2);
        let mut session = SlideSession::new(model.clone(), tiles).unwrap();
        group.throughput(Throughput::Elements(tiles as u64));
        group.bench_function(
            BenchmarkId::new(format!("chunk_{chunk}"), session.isa().name()),
            |b| b.iter(|| stream(&mut session, &emb, d, chunk)),
        );
    }
    group.finish();
}

fn isa_comparison(c: &mut Criterion) {
    let config = ModelConfig::ms_clam(ModelSize::Small);
    let model = model(config);
    let d = config.input_dim;
    let tiles = 1024;
    let (emb, _, _) = synthetic_slide(d, tiles, 0.1, 3);
    let mut group = c.benchmark_group("isa/chunk_1024");
    group.sample_size(10);
    group.throughput(Throughput::Elements(tiles as u64));
    for isa in Isa::all_supported() {
        let mut session = SlideSession::with_isa(model.clone(), tiles, isa).unwrap();
        group.bench_function(isa.name(), |b| {
            b.iter(|| stream(&mut session, &emb, d, tiles))
        });
    }
    group.finish();
}

criterion_group!(benches, session_throughput, isa_comparison);
criterion_main!(benches);
