//! ONNX Runtime and PyTorch, run by `peers.py` in the project's Python environment and driven
//! over a pipe, so that their runs interleave with the engine's in one process tree (pinned
//! to the same core when the bench is started under `taskset`).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{json, Value};

/// A running `peers.py serve`.
pub struct PythonPeers {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Versions the server reported (`onnxruntime`, `torch`, `numpy`).
    pub versions: Value,
}

impl PythonPeers {
    /// Starts `python peers.py serve --dir work` and waits for its `ready` line.
    pub fn start(python: &Path, script: &Path, work: &Path) -> Result<PythonPeers, String> {
        let mut child = Command::new(python)
            .arg(script)
            .arg("serve")
            .arg("--dir")
            .arg(work)
            .env("OMP_NUM_THREADS", "1")
            .env("MKL_NUM_THREADS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", python.display()))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut peers = PythonPeers {
            child,
            stdin,
            stdout,
            versions: Value::Null,
        };
        let ready = peers.read_reply()?;
        if ready.get("ready") != Some(&Value::Bool(true)) {
            return Err(format!("peers.py did not start: {ready}"));
        }
        peers.versions = ready;
        Ok(peers)
    }

    fn read_reply(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        let read = self
            .stdout
            .read_line(&mut line)
            .map_err(|e| format!("reading from peers.py: {e}"))?;
        if read == 0 {
            return Err("peers.py exited".into());
        }
        let reply: Value =
            serde_json::from_str(&line).map_err(|e| format!("peers.py replied {line:?}: {e}"))?;
        match reply.get("error") {
            Some(e) => Err(format!("peers.py: {e}")),
            None => Ok(reply),
        }
    }

    fn request(&mut self, request: Value) -> Result<Value, String> {
        writeln!(self.stdin, "{request}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("writing to peers.py: {e}"))?;
        self.read_reply()
    }

    /// Seconds `peer` (`"ort"` or `"torch"`) takes to stream `tiles` tiles in strips of `strip`.
    pub fn time(&mut self, peer: &str, strip: usize, tiles: usize) -> Result<f64, String> {
        let reply =
            self.request(json!({"cmd": "time", "peer": peer, "strip": strip, "tiles": tiles}))?;
        reply["seconds"]
            .as_f64()
            .ok_or_else(|| format!("no seconds in {reply}"))
    }

    /// Tile probabilities `peer` computes for the first `tiles` tiles.
    pub fn tile_probabilities(&mut self, peer: &str, tiles: usize) -> Result<Vec<f32>, String> {
        let reply =
            self.request(json!({"cmd": "check", "peer": peer, "strip": tiles, "tiles": tiles}))?;
        reply["tile_probabilities"]
            .as_array()
            .ok_or_else(|| format!("no tile_probabilities in {reply}"))?
            .iter()
            .map(|v| {
                v.as_f64()
                    .map(|v| v as f32)
                    .ok_or("not a number".to_string())
            })
            .collect()
    }
}

impl Drop for PythonPeers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
