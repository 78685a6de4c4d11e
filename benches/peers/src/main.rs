//! `msclam-bench`: the engine against its peers, in one run on one machine.
//!
//! Measures the core's FMA peak, then streams the same slide through the MS-CLAM small head
//! (1024/512/256, gated, the same random weights everywhere) with the engine on every
//! instruction set this CPU has, ONNX Runtime and PyTorch (through `peers.py` in the project's
//! Python environment) and tract-onnx, at several strip sizes. Rounds interleave the
//! implementations; the table gives medians and the spread, ratios to the best peer and the
//! share of the FMA peak. `scripts/bench` runs it pinned to one core.

mod fma;
mod kernels;
mod python;
mod report;
mod tract;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use msclam::{random_weights, synthetic_slide};
use msclam_engine::format::{Dtype, ModelWriter};
use msclam_engine::{
    Isa, Model, ModelConfig, ModelSize, ModelWeights, SessionOptions, SlideSession,
};

use report::{Measurements, Report};

#[derive(Parser)]
#[command(about = "The engine against ONNX Runtime, PyTorch and tract-onnx, and the FMA peak")]
struct Args {
    /// Rounds over every implementation and strip size (the table shows their median).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Strip sizes, in tiles.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64, 256, 4096],
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    strips: Vec<usize>,
    /// Tiles per measurement for strips of at least 64 (smaller strips use up to 1,024
    /// tiles), rounded down to whole strips (at least one).
    #[arg(long, default_value_t = 4096)]
    tiles: usize,
    /// Tiles of the slide whose finalize is timed.
    #[arg(long, default_value_t = 100_000)]
    finalize_tiles: usize,
    /// The Python with onnxruntime and torch (default: `$MSCLAM_VENV/bin/python`).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Skip ONNX Runtime and PyTorch.
    #[arg(long)]
    no_python: bool,
    /// Skip tract-onnx.
    #[arg(long)]
    no_tract: bool,
    /// Engine instruction sets to run (default: every one this CPU has).
    #[arg(long, value_delimiter = ',')]
    isa: Vec<String>,
    /// Fail unless every peer ran and agrees with the engine (tile probabilities within 1e-4):
    /// for the smoke run in the test suite.
    #[arg(long)]
    require_peers: bool,
    /// Replace the measured section of this Markdown file with the table.
    #[arg(long)]
    write_doc: Option<PathBuf>,
    /// Only measure intra-slide threads: the engine with 1 and with this many threads,
    /// interleaved, at every strip size (run it on that many cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Only time the matrix kernels (GFLOP/s per instruction set and input block), not the
    /// peers: a diagnostic for kernel work.
    #[arg(long)]
    kernels: bool,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("msclam-bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    if args.kernels {
        kernels::report(args.rounds);
        return Ok(());
    }
    if let Some(threads) = args.threads {
        return threads_report(args, threads);
    }
    let config = ModelConfig::ms_clam(ModelSize::Small);
    let weights = random_weights(config, 1);
    let bytes = ModelWriter::new(&weights)
        .to_bytes()
        .map_err(|e| e.to_string())?;
    let model = Arc::new(Model::from_bytes(&bytes).map_err(|e| e.to_string())?);
    let d = config.input_dim;
    let most = args
        .strips
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(args.tiles);
    let (embeddings, _, _) = synthetic_slide(d, most, 0.1, 7);

    let mut report = Report::new(config);
    eprintln!("measuring the FMA peak");
    report.fma_peaks = fma::fma_peaks();

    let work = std::env::temp_dir().join(format!("msclam-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    dump_head(&weights, &embeddings, most, &work)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers.py");
    let onnx = work.join("head.onnx");
    let python = args
        .python
        .clone()
        .or_else(|| std::env::var_os("MSCLAM_VENV").map(|v| PathBuf::from(v).join("bin/python")));

    // Peers: each either runs or is listed as skipped with the reason.
    let mut peers = None;
    match (&python, args.no_python) {
        (_, true) => report.skip("ONNX Runtime, PyTorch", "--no-python"),
        (None, _) => report.skip("ONNX Runtime, PyTorch", "no MSCLAM_VENV or --python"),
        (Some(py), _) => match export_onnx(py, &script, &work, &onnx)
            .and_then(|()| python::PythonPeers::start(py, &script, &work))
        {
            Ok(p) => {
                report.versions.push(format!("{}", p.versions));
                peers = Some(p);
            }
            Err(e) => report.skip("ONNX Runtime, PyTorch", &e),
        },
    }
    let mut tract_heads = Vec::new();
    if args.no_tract {
        report.skip("tract-onnx", "--no-tract");
    } else if !onnx.exists() {
        report.skip("tract-onnx", "no ONNX graph (peers.py did not run)");
    } else {
        for &strip in &args.strips {
            match tract::TractHead::load(&onnx, strip, d) {
                Ok(head) => tract_heads.push((strip, head)),
                Err(e) => report.skip(&format!("tract-onnx, strip {strip}"), &e.to_string()),
            }
        }
    }

    let isas: Vec<Isa> = Isa::all_supported()
        .into_iter()
        .filter(|i| args.isa.is_empty() || args.isa.iter().any(|n| n == i.name()))
        .collect();
    // `amx` runs the AVX-512 kernels except for bf16 dot products: only those are measured
    // with it (the rest would repeat the avx512 rows).
    let vector_isas: Vec<Isa> = isas.iter().copied().filter(|i| *i != Isa::Amx).collect();
    // f32 sessions first (the agreement check uses the first), then the same weights stored
    // as bf16: widened to f32 in the kernels, and with bf16 dot products (AVX-512 BF16, AMX).
    let mut sessions: Vec<(String, SlideSession<'static>)> = Vec::new();
    for isa in &vector_isas {
        let s = SlideSession::with_isa(model.clone(), most, *isa).map_err(|e| e.to_string())?;
        sessions.push((format!("msclam {} f32", isa.name()), s));
    }
    let bf16_bytes = ModelWriter::new(&weights)
        .matrix_dtype(Dtype::Bf16)
        .to_bytes()
        .map_err(|e| e.to_string())?;
    let bf16_model = Arc::new(Model::from_bytes(&bf16_bytes).map_err(|e| e.to_string())?);
    for isa in &isas {
        for bf16_dot in [false, true] {
            if *isa == Isa::Amx && !bf16_dot {
                continue;
            }
            let options = SessionOptions {
                isa: *isa,
                threads: 1,
                bf16_dot,
                ..SessionOptions::default()
            };
            let s = SlideSession::with_options(bf16_model.clone(), most, options)
                .map_err(|e| e.to_string())?;
            if s.uses_bf16_dot() == bf16_dot {
                let kind = if bf16_dot { "bf16 dot" } else { "bf16 widened" };
                sessions.push((format!("msclam {} {kind}", isa.name()), s));
            }
        }
    }
    let f16_bytes = ModelWriter::new(&weights)
        .matrix_dtype(Dtype::F16)
        .to_bytes()
        .map_err(|e| e.to_string())?;
    let f16_model = Arc::new(Model::from_bytes(&f16_bytes).map_err(|e| e.to_string())?);
    for isa in &vector_isas {
        let s = SlideSession::with_isa(f16_model.clone(), most, *isa).map_err(|e| e.to_string())?;
        sessions.push((format!("msclam {} f16 widened", isa.name()), s));
    }
    // int8 weights: AVX-512 VNNI dot products where the CPU has them, else AVX-VNNI, else
    // 16-bit multiply-adds (AVX2 or SSE2); the same results on every path.
    let int8_bytes = ModelWriter::new(&weights)
        .matrix_dtype(Dtype::Int8)
        .to_bytes()
        .map_err(|e| e.to_string())?;
    let int8_model = Arc::new(Model::from_bytes(&int8_bytes).map_err(|e| e.to_string())?);
    let vnni = msclam_engine::kernels::vnni_supported();
    for isa in &isas {
        let s =
            SlideSession::with_isa(int8_model.clone(), most, *isa).map_err(|e| e.to_string())?;
        let kind = if *isa == Isa::Amx && msclam_engine::kernels::amx_int8_usable() {
            "int8 tiles"
        } else if *isa == Isa::Amx {
            continue;
        } else if isa.vector() == Isa::Avx512 && vnni {
            "int8 vnni"
        } else if *isa != Isa::Portable && msclam_engine::kernels::avx_vnni_supported() {
            "int8 avx-vnni"
        } else {
            "int8 madd16"
        };
        sessions.push((format!("msclam {} {kind}", isa.name()), s));
    }
    if !vnni {
        report.skip("engine int8 VNNI", "this CPU lacks AVX-512 VNNI");
    }
    if !sessions.iter().any(|(l, _)| l.ends_with("bf16 dot")) {
        report.skip("engine bf16 dot products", "this CPU lacks AVX-512 BF16");
    }
    for isa in [Isa::Avx2Fma, Isa::Avx512] {
        if !isa.is_supported() {
            report.skip(&format!("engine {}", isa.name()), "this CPU lacks it");
        }
    }
    if !Isa::Amx.is_supported() {
        report.skip(
            "engine amx bf16 dot",
            "this CPU lacks AMX bf16 tiles, or the OS does not grant them",
        );
    }
    if !msclam_engine::kernels::amx_int8_usable() {
        report.skip(
            "engine amx int8 tiles",
            "this CPU lacks AMX int8 tiles, or the OS does not grant them",
        );
    }
    if Isa::Avx2Fma.is_supported() && !msclam_engine::kernels::avx_vnni_supported() {
        report.skip(
            "engine avx2 int8 avx-vnni",
            "this CPU lacks AVX-VNNI (int8 on AVX2 uses 16-bit multiply-adds)",
        );
    }

    // Same weights, same answers: compare the tile probabilities of the first 64 tiles.
    let check_tiles = 64.min(most);
    let engine_probs = {
        let s = &mut sessions[0].1;
        s.reset();
        s.push(&embeddings[..check_tiles * d], None)
            .map_err(|e| e.to_string())?;
        s.tile_probabilities().to_vec()
    };
    if let Some(p) = peers.as_mut() {
        for peer in ["ort", "torch"] {
            let theirs = p.tile_probabilities(peer, check_tiles)?;
            report
                .agreement
                .push((peer.into(), max_abs_diff(&engine_probs, &theirs)));
        }
    }
    if let Some((strip, head)) = tract_heads.iter().find(|(s, _)| *s <= check_tiles) {
        let theirs = head
            .tile_probabilities(&embeddings)
            .map_err(|e| e.to_string())?;
        let n = theirs.len().min(*strip);
        report.agreement.push((
            "tract".into(),
            max_abs_diff(&engine_probs[..n], &theirs[..n]),
        ));
    }

    // 16-bit and int8 against f32, same slide: largest tile and slide probability differences.
    let f32_result = slide_outputs(&mut sessions[0].1, &embeddings, d)?;
    for (label, s) in sessions.iter_mut().filter(|(l, _)| !l.ends_with("f32")) {
        let (tiles_p, slide_p) = slide_outputs(s, &embeddings, d)?;
        let tile_diff = max_abs_diff(&tiles_p, &f32_result.0);
        let flips = tiles_p
            .iter()
            .zip(&f32_result.0)
            .filter(|(a, b)| (**a >= 0.5) != (**b >= 0.5))
            .count();
        report.reduced_precision_accuracy.push(format!(
            "{label}: largest |tile probability difference| from f32 {tile_diff:.1e} over {} \
             tiles ({flips} change side of 0.5), slide probability {:.1e}",
            f32_result.0.len(),
            (slide_p - f32_result.1).abs()
        ));
    }

    if args.require_peers {
        if let Some((what, why)) = report
            .skipped
            .iter()
            .find(|(w, _)| !w.starts_with("engine"))
        {
            return Err(format!("--require-peers: {what} did not run ({why})"));
        }
        if let Some((peer, diff)) = report
            .agreement
            .iter()
            .find(|(_, d)| d.is_nan() || *d > 1e-4)
        {
            return Err(format!(
                "{peer} disagrees with the engine: tile probabilities differ by {diff:e}"
            ));
        }
        eprintln!("every peer ran and agrees with the engine within 1e-4");
    }

    let mut m = Measurements::default();
    for (label, _) in &sessions {
        m.declare(label);
    }
    // Per strip, the f32 engines run right before the peers (their ratios pair measurements
    // seconds apart), the other weight types after them.
    let is_f32 = |label: &str| label.ends_with(" f32");
    for round in 0..args.rounds {
        eprintln!("round {}/{}", round + 1, args.rounds);
        for &strip in &args.strips {
            let tiles = tiles_for(strip, args.tiles);
            let x = &embeddings[..tiles * d];
            // The peaks of this moment: the engines' share of them pairs with this round.
            for (width, gflops) in fma::fma_peaks_with(2_000_000) {
                report.round_peaks.add(width, strip, gflops);
            }
            for (label, s) in sessions.iter_mut().filter(|(l, _)| is_f32(l)) {
                let secs = time_engine(s, x, d, strip)?;
                m.add(label, strip, tiles as f64 / secs);
            }
            if let Some(p) = peers.as_mut() {
                for (peer, label) in [("ort", "ONNX Runtime"), ("torch", "PyTorch (libtorch)")] {
                    let secs = p.time(peer, strip, tiles)?;
                    m.add(label, strip, tiles as f64 / secs);
                }
            }
            if let Some((_, head)) = tract_heads.iter().find(|(s, _)| *s == strip) {
                let secs = head.time(x).map_err(|e| e.to_string())?;
                m.add("tract-onnx", strip, tiles as f64 / secs);
            }
            for (label, s) in sessions.iter_mut().filter(|(l, _)| !is_f32(l)) {
                let secs = time_engine(s, x, d, strip)?;
                m.add(label, strip, tiles as f64 / secs);
            }
        }
    }
    report.measurements = m;
    report.finalize = time_finalize(&model, &embeddings, most, d, args.finalize_tiles)?;

    let table = report.render(&args.strips);
    println!("{table}");
    if let Some(doc) = &args.write_doc {
        report::write_section(doc, &table)?;
        eprintln!("wrote the table into {}", doc.display());
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The engine with one thread and with `threads`, interleaved, on the best instruction set.
fn threads_report(args: &Args, threads: usize) -> Result<(), String> {
    let config = ModelConfig::ms_clam(ModelSize::Small);
    let bytes = ModelWriter::new(&random_weights(config, 1))
        .to_bytes()
        .map_err(|e| e.to_string())?;
    let model = Arc::new(Model::from_bytes(&bytes).map_err(|e| e.to_string())?);
    let d = config.input_dim;
    let strips = args.strips.clone();
    let most = strips.iter().copied().max().unwrap_or(256).max(args.tiles);
    let (embeddings, _, _) = synthetic_slide(d, most, 0.1, 7);
    let mut sessions = Vec::new();
    for t in [1, threads] {
        let options = SessionOptions {
            threads: t,
            ..SessionOptions::default()
        };
        let s =
            SlideSession::with_options(model.clone(), most, options).map_err(|e| e.to_string())?;
        sessions.push((t, s));
    }
    let isa = sessions[0].1.isa().name();
    let mut m = Measurements::default();
    for round in 0..args.rounds {
        eprintln!("round {}/{}", round + 1, args.rounds);
        for &strip in &strips {
            let tiles = tiles_for(strip, args.tiles);
            for (t, s) in sessions.iter_mut() {
                let secs = time_engine(s, &embeddings[..tiles * d], d, strip)?;
                m.add(
                    &format!("msclam {isa} f32, {t} thread(s)"),
                    strip,
                    tiles as f64 / secs,
                );
            }
        }
    }
    let table = report::render_threads(&m, &strips, threads, args.rounds);
    println!("{table}");
    if let Some(doc) = &args.write_doc {
        report::write_section_named(doc, "threads", &table)?;
        eprintln!("wrote the thread table into {}", doc.display());
    }
    Ok(())
}

/// Tile probabilities and the slide's tumor probability of `embeddings` in one push.
fn slide_outputs(
    s: &mut SlideSession<'_>,
    embeddings: &[f32],
    d: usize,
) -> Result<(Vec<f32>, f32), String> {
    s.reset();
    let p = s
        .push(
            &embeddings[..(embeddings.len() / d).min(s.capacity()) * d],
            None,
        )
        .map_err(|e| e.to_string())?;
    let slide = p.slide_tumor_probability.ok_or("no tiles to score")?;
    Ok((s.tile_probabilities().to_vec(), slide))
}

/// Tiles per measurement: a whole number of strips (at least one), enough to time reliably,
/// and never more than the synthetic slide holds (`tiles`, or one strip if that is larger).
fn tiles_for(strip: usize, tiles: usize) -> usize {
    let want = if strip < 64 { 1024.min(tiles) } else { tiles };
    (want / strip).max(1) * strip
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max)
}

/// Seconds to stream `x` through a fresh slide in strips of `strip` (finalize not included).
fn time_engine(s: &mut SlideSession<'_>, x: &[f32], d: usize, strip: usize) -> Result<f64, String> {
    s.reset();
    let start = Instant::now();
    let mut last = 0.0;
    for chunk in x.chunks(strip * d) {
        last = s
            .push(chunk, None)
            .map_err(|e| e.to_string())?
            .slide_tumor_probability
            .unwrap_or(f32::NAN);
    }
    let secs = start.elapsed().as_secs_f64();
    std::hint::black_box(last);
    Ok(secs)
}

/// Median seconds of `finalize` over a slide of `tiles` tiles (3 fills of the session).
fn time_finalize(
    model: &Arc<Model>,
    embeddings: &[f32],
    available: usize,
    d: usize,
    tiles: usize,
) -> Result<(usize, Vec<f64>), String> {
    let mut s = SlideSession::new(model.clone(), tiles).map_err(|e| e.to_string())?;
    let mut times = Vec::new();
    for _ in 0..3 {
        s.reset();
        let mut left = tiles;
        while left > 0 {
            let n = left.min(available);
            s.push(&embeddings[..n * d], None)
                .map_err(|e| e.to_string())?;
            left -= n;
        }
        let start = Instant::now();
        let r = s.finalize().map_err(|e| e.to_string())?;
        times.push(start.elapsed().as_secs_f64());
        std::hint::black_box(r.tumor_tiles);
    }
    Ok((tiles, times))
}

/// Writes the head's weights (row-major f32, PyTorch's layout) and the embeddings for
/// `peers.py`, with a `head.json` manifest.
fn dump_head(w: &ModelWeights, emb: &[f32], tiles: usize, dir: &Path) -> Result<(), String> {
    let c = w.config;
    let (d, h, k) = (c.input_dim, c.hidden_dim, c.attention_dim);
    let t = c.tumor_tile_classifier();
    let not_tumor = &w.tile_classifier_weight[2 * t * h..(2 * t + 1) * h];
    let tumor = &w.tile_classifier_weight[(2 * t + 1) * h..(2 * t + 2) * h];
    let tile_weight: Vec<f32> = tumor.iter().zip(not_tumor).map(|(a, b)| a - b).collect();
    let tile_bias = [w.tile_classifier_bias[2 * t + 1] - w.tile_classifier_bias[2 * t]];
    let mut tensors = vec![
        ("fc_weight", &w.fc_weight[..], vec![h, d]),
        ("fc_bias", &w.fc_bias[..], vec![h]),
        ("attention_a_weight", &w.attention_a_weight[..], vec![k, h]),
        ("attention_a_bias", &w.attention_a_bias[..], vec![k]),
        ("attention_c_weight", &w.attention_c_weight[..], vec![1, k]),
        ("attention_c_bias", &w.attention_c_bias[..], vec![1]),
        ("tile_weight", &tile_weight[..], vec![1, h]),
        ("tile_bias", &tile_bias[..], vec![1]),
        ("embeddings", &emb[..tiles * d], vec![tiles, d]),
    ];
    let gated = !w.attention_b_weight.is_empty();
    if gated {
        tensors.push(("attention_b_weight", &w.attention_b_weight[..], vec![k, h]));
        tensors.push(("attention_b_bias", &w.attention_b_bias[..], vec![k]));
    }
    let mut manifest = serde_json::Map::new();
    for (name, values, shape) in &tensors {
        let file = format!("{name}.f32");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.join(&file), bytes).map_err(|e| format!("{file}: {e}"))?;
        manifest.insert(
            name.to_string(),
            serde_json::json!({"file": file, "shape": shape}),
        );
    }
    let embeddings = manifest.remove("embeddings");
    let head = serde_json::json!({
        "input_dim": d, "hidden_dim": h, "attention_dim": k, "gated": gated,
        "tensors": manifest, "embeddings": embeddings,
    });
    std::fs::write(dir.join("head.json"), head.to_string()).map_err(|e| e.to_string())
}

/// Writes the head as ONNX with `peers.py export-onnx`.
fn export_onnx(python: &Path, script: &Path, work: &Path, onnx: &Path) -> Result<(), String> {
    let status = std::process::Command::new(python)
        .arg(script)
        .args(["export-onnx", "--dir"])
        .arg(work)
        .arg("--out")
        .arg(onnx)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("peers.py export-onnx failed ({status})"))
    }
}
