//! The bench's table: medians and spreads, ratios to the best peer, share of the FMA peak, and
//! the section of `docs/PERFORMANCE.md` it replaces.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use msclam_engine::{AttentionKind, ModelConfig};

/// Tiles/s samples per implementation and strip size, in insertion order of implementations.
#[derive(Default)]
pub struct Measurements {
    rows: Vec<(String, BTreeMap<usize, Vec<f64>>)>,
}

impl Measurements {
    /// Records one run of `label` at `strip`.
    pub fn add(&mut self, label: &str, strip: usize, tiles_per_s: f64) {
        let pos = match self.rows.iter().position(|(l, _)| l == label) {
            Some(p) => p,
            None => {
                self.rows.push((label.to_string(), BTreeMap::new()));
                self.rows.len() - 1
            }
        };
        self.rows[pos].1.entry(strip).or_default().push(tiles_per_s);
    }

    /// The Markdown table header and one row per implementation: median (minimum–maximum).
    fn write_table(&self, s: &mut String, strips: &[usize]) {
        let heads: Vec<String> = strips.iter().map(|v| format!("strip {v}")).collect();
        let _ = writeln!(s, "| tiles/s | {} |", heads.join(" | "));
        let _ = writeln!(s, "|---|{}", "---|".repeat(strips.len()));
        for (label, by_strip) in &self.rows {
            let cells: Vec<String> = strips
                .iter()
                .map(|st| match by_strip.get(st) {
                    Some(v) => {
                        let (med, lo, hi) = stats(v);
                        format!("{} ({}–{})", thousands(med), thousands(lo), thousands(hi))
                    }
                    None => "—".into(),
                })
                .collect();
            let _ = writeln!(s, "| {label} | {} |", cells.join(" | "));
        }
    }

    /// Adds an empty row for `label`, so that rows keep this order whatever the order of the
    /// measurements.
    pub fn declare(&mut self, label: &str) {
        if !self.rows.iter().any(|(l, _)| l == label) {
            self.rows.push((label.to_string(), BTreeMap::new()));
        }
    }

    fn samples(&self, label: &str, strip: usize) -> Option<&Vec<f64>> {
        let (_, by_strip) = self.rows.iter().find(|(l, _)| l == label)?;
        by_strip.get(&strip).filter(|v| !v.is_empty())
    }

    fn median(&self, label: &str, strip: usize) -> Option<f64> {
        self.samples(label, strip).map(|v| stats(v).0)
    }

    /// Paired ratios: in each round, `label`'s speed over the fastest of `others` in the same
    /// round (measured seconds apart, so a slow phase of a shared host moves both sides);
    /// median, minimum and maximum over the rounds.
    fn paired_ratio(
        &self,
        label: &str,
        others: &[&String],
        strip: usize,
    ) -> Option<(f64, f64, f64)> {
        let ours = self.samples(label, strip)?;
        let theirs: Vec<&Vec<f64>> = others
            .iter()
            .filter_map(|o| self.samples(o, strip))
            .filter(|v| v.len() == ours.len())
            .collect();
        if theirs.is_empty() {
            return None;
        }
        let ratios: Vec<f64> = (0..ours.len())
            .map(|i| ours[i] / theirs.iter().map(|v| v[i]).fold(0.0, f64::max))
            .collect();
        Some(stats(&ratios))
    }

    /// Paired shares of a peak: in each round, `label`'s tiles/s over the `width` peak
    /// (GFLOP/s) measured in the same round (`peaks`); median, minimum and maximum over the
    /// rounds, in tiles per GFLOP. None without a peak for every round.
    fn paired_share(
        &self,
        label: &str,
        peaks: &Measurements,
        width: &str,
        strip: usize,
    ) -> Option<(f64, f64, f64)> {
        let ours = self.samples(label, strip)?;
        let peak = peaks.samples(width, strip)?;
        (peak.len() == ours.len()).then(|| {
            let shares: Vec<f64> = ours.iter().zip(peak).map(|(o, p)| o / p).collect();
            stats(&shares)
        })
    }
}

/// Median, minimum and maximum.
fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    (median, v[0], v[v.len() - 1])
}

fn thousands(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

/// Everything one run found.
pub struct Report {
    config: ModelConfig,
    /// `(width, GFLOP/s)` per vector width.
    pub fma_peaks: Vec<(&'static str, f64)>,
    /// Peer versions as reported.
    pub versions: Vec<String>,
    /// `(what, why)` for each implementation not run.
    pub skipped: Vec<(String, String)>,
    /// `(peer, largest |difference| of tile probabilities against the engine)`.
    pub agreement: Vec<(String, f64)>,
    /// One line per 16-bit-weight session: its differences from the f32 engine.
    pub reduced_precision_accuracy: Vec<String>,
    pub measurements: Measurements,
    /// The peaks (GFLOP/s, labelled by width) measured in each round right before the f32
    /// engines, per strip: the engines' share of the peak pairs with them.
    pub round_peaks: Measurements,
    /// Tiles, and seconds of each finalize.
    pub finalize: (usize, Vec<f64>),
}

impl Report {
    pub fn new(config: ModelConfig) -> Report {
        Report {
            config,
            fma_peaks: Vec::new(),
            versions: Vec::new(),
            skipped: Vec::new(),
            agreement: Vec::new(),
            reduced_precision_accuracy: Vec::new(),
            measurements: Measurements::default(),
            round_peaks: Measurements::default(),
            finalize: (0, Vec::new()),
        }
    }

    /// Records that `what` was not run, and why.
    pub fn skip(&mut self, what: &str, why: &str) {
        eprintln!("skipped {what}: {why}");
        self.skipped.push((what.to_string(), why.to_string()));
    }

    /// Multiply-adds of the matrix products per tile, times two.
    fn flops_per_tile(&self) -> f64 {
        let c = &self.config;
        let gates = if c.attention == AttentionKind::Gated {
            2
        } else {
            1
        };
        2.0 * (c.input_dim * c.hidden_dim + gates * c.hidden_dim * c.attention_dim) as f64
    }

    /// The Markdown section: machine, peaks, table, ratios, finalize, skips.
    pub fn render(&self, strips: &[usize]) -> String {
        let mut s = String::new();
        let flops = self.flops_per_tile();
        let _ = writeln!(
            s,
            "Measured {} by `scripts/bench` (one thread pinned to one core, \
            {} rounds interleaving the implementations; median tiles/s with the range; a ratio \
            to the best peer is the median of each round's ratio to that round's fastest peer, \
            with its range: the f32 engines run right before the peers; a share of a peak is the \
            median of each round's share of the peak measured right before that round's f32 \
            engines, with its range).\n",
            today(),
            self.rounds()
        );
        let _ = writeln!(s, "- CPU: {}; flags: {}", cpu_model(), cpu_flags());
        for (width, gflops) in &self.fma_peaks {
            let what = match *width {
                "vnni512" => "int8 dot-product (AVX-512 VNNI) peak",
                "vnni256" => "int8 dot-product (AVX-VNNI) peak",
                "bf16dot" => "bf16 dot-product (AVX-512 BF16) peak",
                "amx" => "bf16 tile (AMX) peak",
                _ => "FMA peak",
            };
            let _ = writeln!(
                s,
                "- {what}, {width}: {gflops:.1} GOP/s, i.e. {} tiles/s at \
                {:.3} M multiply-adds x 2 per tile",
                thousands(gflops * 1e9 / flops),
                flops / 2e6
            );
        }
        for v in &self.versions {
            let _ = writeln!(s, "- peers: {v}");
        }
        for (peer, diff) in &self.agreement {
            let _ = writeln!(
                s,
                "- same answers: largest |tile probability difference| from the \
                engine over 64 tiles, {peer}: {diff:.1e}"
            );
        }
        for line in &self.reduced_precision_accuracy {
            let _ = writeln!(
                s,
                "- reduced-precision weights (same random model, same slide), {line}"
            );
        }
        let _ = writeln!(s);
        self.measurements.write_table(&mut s, strips);
        let engines: Vec<&String> = self
            .measurements
            .rows
            .iter()
            .map(|(l, _)| l)
            .filter(|l| l.starts_with("msclam"))
            .collect();
        let peers: Vec<&String> = self
            .measurements
            .rows
            .iter()
            .map(|(l, _)| l)
            .filter(|l| !l.starts_with("msclam"))
            .collect();
        for engine in &engines {
            if !peers.is_empty() {
                let cells: Vec<String> = strips
                    .iter()
                    .map(
                        |st| match self.measurements.paired_ratio(engine, &peers, *st) {
                            Some((med, lo, hi)) => format!("{med:.2}x ({lo:.2}–{hi:.2})"),
                            None => "—".into(),
                        },
                    )
                    .collect();
                let _ = writeln!(s, "| {engine} ÷ best peer | {} |", cells.join(" | "));
            }
            let width = if engine.ends_with("int8 vnni") {
                "vnni512"
            } else if engine.ends_with("int8 avx-vnni") {
                "vnni256"
            } else if engine.ends_with("int8 tiles") {
                "amx-int8"
            } else if engine.ends_with("avx512 bf16 dot") {
                "bf16dot"
            } else {
                engine.split_whitespace().nth(1).unwrap_or("")
            };
            if let Some((_, peak)) = self.fma_peaks.iter().find(|(w, _)| *w == width) {
                let cells: Vec<String> = strips
                    .iter()
                    .map(|st| {
                        let paired =
                            self.measurements
                                .paired_share(engine, &self.round_peaks, width, *st);
                        match (paired, self.measurements.median(engine, *st)) {
                            (Some((med, lo, hi)), _) => {
                                let pct = |g: f64| 100.0 * g * flops / 1e9;
                                format!("{:.0} % ({:.0}–{:.0})", pct(med), pct(lo), pct(hi))
                            }
                            (None, Some(ours)) => {
                                format!("{:.0} %", 100.0 * ours * flops / (peak * 1e9))
                            }
                            (None, None) => "—".into(),
                        }
                    })
                    .collect();
                let _ = writeln!(s, "| {engine}, % of {width} peak | {} |", cells.join(" | "));
            }
        }
        let (tiles, times) = &self.finalize;
        if !times.is_empty() {
            let (med, lo, hi) = stats(times);
            let _ = writeln!(
                s,
                "\nFinalize (attention map and tumor mask) of a {tiles}-tile slide: \
                {:.2} ms median ({:.2}–{:.2} ms).",
                med * 1e3,
                lo * 1e3,
                hi * 1e3
            );
        }
        for (what, why) in &self.skipped {
            let _ = writeln!(s, "\nSkipped: {what} ({why}).");
        }
        s
    }

    fn rounds(&self) -> usize {
        self.measurements
            .rows
            .first()
            .and_then(|(_, m)| m.values().next())
            .map_or(0, Vec::len)
    }
}

/// The intra-slide threads table: tiles/s with 1 and `threads` threads, and the speed-up.
pub fn render_threads(m: &Measurements, strips: &[usize], threads: usize, rounds: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Measured {} by `scripts/bench` on {threads} cores ({rounds} rounds, interleaved; median \
         tiles/s with the range; the speed-up is the median of each round's ratio, with its \
         range). CPU: {}.\n",
        today(),
        cpu_model()
    );
    m.write_table(&mut s, strips);
    if let [(one, _), (many, _)] = &m.rows[..] {
        let cells: Vec<String> = strips
            .iter()
            .map(|st| match m.paired_ratio(many, &[one], *st) {
                Some((med, lo, hi)) => format!("{med:.2}x ({lo:.2}–{hi:.2})"),
                None => "—".into(),
            })
            .collect();
        let _ = writeln!(s, "| speed-up, {threads} threads | {} |", cells.join(" | "));
    }
    s
}

/// Replaces the text between the main bench markers of `doc` with `table` (appends a section
/// with the markers if there is none).
pub fn write_section(doc: &Path, table: &str) -> Result<(), String> {
    write_section_named(doc, "peers", table)
}

/// Replaces the text between the markers `<!-- scripts/bench NAME: begin/end -->` of `doc`.
pub fn write_section_named(doc: &Path, name: &str, table: &str) -> Result<(), String> {
    let (begin, end) = (
        format!("<!-- scripts/bench {name}: begin -->"),
        format!("<!-- scripts/bench {name}: end -->"),
    );
    let text = std::fs::read_to_string(doc).map_err(|e| format!("{}: {e}", doc.display()))?;
    let section = format!("{begin}\n{table}\n{end}");
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{section}{}", &text[..b], &text[e + end.len()..])
        }
        _ => format!("{text}\n{section}\n"),
    };
    std::fs::write(doc, new).map_err(|e| format!("{}: {e}", doc.display()))
}

fn cpuinfo_field(name: &str) -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn cpu_model() -> String {
    cpuinfo_field("model name").unwrap_or_else(|| "unknown CPU".into())
}

/// The flags that matter to the kernels, as the kernel reports them.
fn cpu_flags() -> String {
    let all = cpuinfo_field("flags").unwrap_or_default();
    let wanted = [
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "avx_vnni",
        "amx_bf16",
        "amx_int8",
    ];
    let have: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|f| all.split_whitespace().any(|x| x == *f))
        .collect();
    have.join(" ")
}

fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "on an unknown date".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_pair_each_round_with_its_fastest_peer() {
        let mut m = Measurements::default();
        m.declare("msclam f32");
        for (ours, a, b) in [(10.0, 5.0, 8.0), (20.0, 10.0, 5.0), (30.0, 20.0, 10.0)] {
            m.add("msclam f32", 1, ours);
            m.add("peer a", 1, a);
            m.add("peer b", 1, b);
        }
        let (a, b) = ("peer a".to_string(), "peer b".to_string());
        // Fastest peer per round: 8, 10, 20; ratios 1.25, 2, 1.5 (the ratio of the medians
        // would be 20 / 10 = 2).
        assert_eq!(
            m.paired_ratio("msclam f32", &[&a, &b], 1),
            Some((1.5, 1.25, 2.0))
        );
        assert_eq!(m.paired_ratio("msclam f32", &[&a, &b], 16), None);
        // A peer missing a round is left out rather than paired with another round.
        m.add("peer c", 1, 100.0);
        let c = "peer c".to_string();
        assert_eq!(
            m.paired_ratio("msclam f32", &[&a, &c], 1),
            Some((2.0, 1.5, 2.0))
        );
    }

    #[test]
    fn shares_of_the_peak_pair_each_round_with_its_own_peak() {
        let mut m = Measurements::default();
        let mut peaks = Measurements::default();
        // A slow phase halves both the engine and the peak in round 2.
        for (ours, peak) in [(100.0, 200.0), (50.0, 100.0), (90.0, 200.0)] {
            m.add("msclam avx512 f32", 64, ours);
            peaks.add("avx512", 64, peak);
        }
        // Shares 0.5, 0.5, 0.45 (the median of the engine over the median peak: 90 / 200).
        assert_eq!(
            m.paired_share("msclam avx512 f32", &peaks, "avx512", 64),
            Some((0.5, 0.45, 0.5))
        );
        assert_eq!(
            m.paired_share("msclam avx512 f32", &peaks, "avx2", 64),
            None
        );
        // A peak missing a round: no pairing.
        peaks.add("avx2", 64, 1.0);
        m.add("msclam avx2 f32", 64, 1.0);
        m.add("msclam avx2 f32", 64, 1.0);
        assert_eq!(m.paired_share("msclam avx2 f32", &peaks, "avx2", 64), None);
    }
}
