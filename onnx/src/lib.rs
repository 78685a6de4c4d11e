//! msclam and ONNX, behind its own crate so that the engine stays small:
//!
//! - [`export`]: the MS-CLAM head as ONNX graphs (tile head and slide head), for integrators
//!   who run their own ONNX runtime;
//! - [`encoder`]: a tile encoder (an ONNX image model: CLAM's truncated ResNet-50, UNI, ...)
//!   run by tract-onnx, turning a scanner's interleaved RGB tiles into embeddings that are
//!   pushed into an engine session.

#![deny(missing_docs)]

pub mod encoder;
mod error;
pub mod export;

pub use encoder::{ChannelOrder, EncoderOptions, TileEncoder};
pub use error::{OnnxError, Result};
pub use export::{export_heads, OnnxHeads};
