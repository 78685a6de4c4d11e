//! # msclam-engine
//!
//! Streaming inference for MS-CLAM (mixed-supervision CLAM) tumor detection on whole-slide
//! images. A slide is a bag of tile embeddings; the scanner pushes them in strips while it scans
//! and reads, after every strip, each new tile's tumor probability and the current slide score;
//! at the end, the attention map and the tumor mask.
//!
//! ```
//! use std::sync::Arc;
//! use msclam_engine::{format::ModelWriter, Model, ModelConfig, ModelSize, ModelWeights, SlideSession};
//!
//! // A model file (normally written by the trainer).
//! let weights = ModelWeights::zeros(ModelConfig::ms_clam(ModelSize::Tiny));
//! let bytes = ModelWriter::new(&weights).to_bytes()?;
//! let model = Arc::new(Model::from_bytes(&bytes)?);
//!
//! let mut session = SlideSession::new(model.clone(), 10_000)?;
//! let strip = vec![0.5f32; 3 * model.config().input_dim]; // three tiles
//! let pushed = session.push(&strip, None)?;
//! if let Some(p) = pushed.slide_tumor_probability {
//!     println!("slide tumor probability so far: {p}");
//! }
//! let result = session.finalize()?;
//! assert_eq!(result.attention.len(), 3);
//! session.reset(); // next slide, same memory
//! # Ok::<(), msclam_engine::Error>(())
//! ```
//!
//! Layers: [`format`] (the `.mscl` bytes), [`Model`] (validated weights, in place where
//! possible), [`SlideSession`] (streaming state), [`kernels`] (the arithmetic), [`reference`]
//! (the plain f64 forward pass that tests compare against).

#![deny(missing_docs)]

mod aligned;
mod config;
mod error;
pub mod format;
mod forward;
pub mod kernels;
mod memory;
mod model;
pub mod reference;
mod session;
pub mod statistics;
mod strip;
mod weights;
mod workers;

pub use config::{AttentionKind, ModelConfig, ModelSize, TileClassifierKind, MAX_CLASSES, MAX_DIM};
pub use error::{Error, Result};
pub use forward::BLOCK_TILES;
pub use kernels::{Isa, KernelPlan};
pub use memory::SESSION_ALIGNMENT;
pub use model::{MatrixWeights, Metadata, Model, ModelMemory};
pub use session::{
    PushSummary, SessionOptions, SlideResult, SlideSession, SmallStripSplit, MAX_CAPACITY,
    MAX_THREADS,
};
pub use weights::ModelWeights;
