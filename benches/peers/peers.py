"""Peer implementations of the MS-CLAM per-tile head, for benchmarking the msclam engine.

The Rust side writes a work directory (head.json plus raw little-endian float32 tensors and
embeddings) and drives this script over stdin/stdout, so engine and peer runs can be
interleaved. Both peers run on one thread: onnxruntime (CPU provider, sequential, full graph
optimisation) on an ONNX export of the head, and torch (nn.Linear layers, inference mode).

Per tile x: h = relu(W1 x + b1); a = tanh(Wa h + ba); g = sigmoid(Wb h + bb) (gated only);
s = wc . (a * g) + bc (or wc . a + bc); p = sigmoid(wt . h + bt). Per strip: m = max s,
e = exp(s - m), wsum = sum e, hsum = sum e h. Strips are merged by online softmax in float64.

Commands:
  peers.py export-onnx --dir WORK [--out WORK/head.onnx]
  peers.py serve --dir WORK
      prints {"ready": true, "onnxruntime": V, "torch": V, "numpy": V}, then answers one JSON
      line per request line until EOF:
      {"cmd": "time", "peer": "ort"|"torch", "strip": S, "tiles": T} -> {"seconds": F}
      {"cmd": "check", "peer": ..., "strip": S, "tiles": T}
          -> {"attention_logits": [T], "tile_probabilities": [T], "slide_embedding": [H]}
      any failure -> {"error": "message"}
  peers.py selftest
      checks both peers against float64 numpy on random heads and prints their tiles/s on a
      1024/512/256 gated head; run it pinned: taskset -c 1 python peers.py selftest

Tested with Python 3.11, numpy 2.2.6, torch 2.11.0 (+cu130 wheel, run on CPU), onnx 1.23.2,
onnxruntime 1.32.0 (all from PyPI).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OUTPUTS = ["attention_logits", "tile_probabilities", "strip_max", "weight_sum", "hidden_sum"]


def load_head(work):
    """Returns (config, tensors, embeddings) from a work directory."""
    work = Path(work)
    cfg = json.loads((work / "head.json").read_text())

    def read(entry):
        data = np.fromfile(work / entry["file"], dtype="<f4")
        return data.reshape(entry["shape"]).astype(np.float32, copy=False)

    tensors = {name: read(entry) for name, entry in cfg["tensors"].items()}
    return cfg, tensors, read(cfg["embeddings"])


def export_onnx(work, out):
    """Writes the head of `work` as an opset-17 ONNX graph to `out`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cfg, t, _ = load_head(work)
    inits = {
        "w1": t["fc_weight"].T, "b1": t["fc_bias"],
        "wa": t["attention_a_weight"].T, "ba": t["attention_a_bias"],
        "wc": t["attention_c_weight"].T, "bc": t["attention_c_bias"],
        "wt": t["tile_weight"].T, "bt": t["tile_bias"],
        "flat": np.array([-1], dtype=np.int64), "axis0": np.array([0], dtype=np.int64),
    }  # fmt: skip
    node = helper.make_node
    nodes = [
        node("Gemm", ["embeddings", "w1", "b1"], ["h_pre"]),
        node("Relu", ["h_pre"], ["h"]),
        node("Gemm", ["h", "wa", "ba"], ["a_pre"]),
        node("Tanh", ["a_pre"], ["a"]),
    ]
    attended = "a"
    if cfg["gated"]:
        inits["wb"] = t["attention_b_weight"].T
        inits["bb"] = t["attention_b_bias"]
        nodes += [
            node("Gemm", ["h", "wb", "bb"], ["g_pre"]),
            node("Sigmoid", ["g_pre"], ["g"]),
            node("Mul", ["a", "g"], ["ag"]),
        ]
        attended = "ag"
    nodes += [
        node("Gemm", [attended, "wc", "bc"], ["s"]),
        node("Reshape", ["s", "flat"], ["attention_logits"]),
        node("Gemm", ["h", "wt", "bt"], ["z"]),
        node("Sigmoid", ["z"], ["p"]),
        node("Reshape", ["p", "flat"], ["tile_probabilities"]),
        node("ReduceMax", ["s"], ["strip_max"], axes=[0], keepdims=0),
        node("Sub", ["s", "strip_max"], ["s_shift"]),
        node("Exp", ["s_shift"], ["e"]),
        node("ReduceSum", ["e", "axis0"], ["weight_sum"], keepdims=0),
        node("Mul", ["e", "h"], ["eh"]),
        node("ReduceSum", ["eh", "axis0"], ["hidden_sum"], keepdims=0),
    ]

    def info(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    shapes = [["N"], ["N"], [1], [1], [cfg["hidden_dim"]]]
    graph = helper.make_graph(
        nodes,
        "msclam_head",
        [info("embeddings", ["N", cfg["input_dim"]])],
        [info(name, shape) for name, shape in zip(OUTPUTS, shapes, strict=True)],
        [numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out)


def ort_peer(work):
    """Returns a strip function backed by a single-threaded onnxruntime session."""
    import onnxruntime as ort

    path = Path(work) / "head.onnx"
    if not path.exists():
        export_onnx(work, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda strip: session.run(OUTPUTS, {"embeddings": strip}), lambda a: a


def torch_peer(cfg, t):
    """Returns a strip function backed by a single-threaded torch module."""
    import torch
    from torch import nn

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set, or parallel work already started

    def linear(name):
        weight = torch.from_numpy(t[f"{name}_weight"])
        layer = nn.Linear(weight.shape[1], weight.shape[0])
        layer.weight.data = weight
        layer.bias.data = torch.from_numpy(t[f"{name}_bias"])
        return layer

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = linear("fc")
            self.attention_a = linear("attention_a")
            self.attention_b = linear("attention_b") if cfg["gated"] else None
            self.attention_c = linear("attention_c")
            self.tile = linear("tile")

        def forward(self, x):
            h = torch.relu(self.fc(x))
            a = torch.tanh(self.attention_a(h))
            if self.attention_b is not None:
                a = a * torch.sigmoid(self.attention_b(h))
            s = self.attention_c(a).reshape(-1)
            p = torch.sigmoid(self.tile(h)).reshape(-1)
            m = s.max().reshape(1)
            e = torch.exp(s - m)
            return s, p, m, e.sum().reshape(1), e @ h

    head = Head().eval()

    def run(strip):
        with torch.inference_mode():
            return [out.numpy() for out in head(strip)]

    return run, torch.from_numpy


class Aggregate:
    """Online softmax over strips, in float64."""

    def __init__(self, hidden):
        self.max, self.wsum, self.hsum = -np.inf, 0.0, np.zeros(hidden)

    def add(self, strip_max, wsum, hsum):
        new_max = max(self.max, float(strip_max[0]))
        old, cur = np.exp(self.max - new_max), np.exp(float(strip_max[0]) - new_max)
        self.wsum = self.wsum * old + float(wsum[0]) * cur
        self.hsum = self.hsum * old + hsum.astype(np.float64) * cur
        self.max = new_max


class Server:
    """Answers `time` and `check` requests for both peers on one work directory."""

    def __init__(self, work):
        self.cfg, tensors, self.emb = load_head(work)
        self.peers = {"ort": ort_peer(work), "torch": torch_peer(self.cfg, tensors)}
        self.warm = set()

    def strips(self, peer, size, tiles):
        if size < 1 or not 1 <= tiles <= len(self.emb):
            raise ValueError(f"need strip >= 1 and 1 <= tiles <= {len(self.emb)}")
        if peer not in self.peers:
            raise ValueError(f"unknown peer {peer!r}")
        run, wrap = self.peers[peer]
        emb = self.emb[:tiles]
        parts = [np.ascontiguousarray(emb[i : i + size]) for i in range(0, tiles, size)]
        parts = [wrap(part) for part in parts]
        if (peer, size) not in self.warm:
            run(parts[0])
            self.warm.add((peer, size))
        return run, parts

    def time(self, peer, strip, tiles):
        run, parts = self.strips(peer, strip, tiles)
        agg = Aggregate(self.cfg["hidden_dim"])
        start = time.perf_counter()
        for part in parts:
            agg.add(*run(part)[2:])
        return {"seconds": time.perf_counter() - start}

    def check(self, peer, strip, tiles):
        run, parts = self.strips(peer, strip, tiles)
        agg = Aggregate(self.cfg["hidden_dim"])
        logits, probs = [], []
        for part in parts:
            s, p, *rest = run(part)
            logits.append(s)
            probs.append(p)
            agg.add(*rest)
        return {
            "attention_logits": np.concatenate(logits).astype(np.float64).tolist(),
            "tile_probabilities": np.concatenate(probs).astype(np.float64).tolist(),
            "slide_embedding": (agg.hsum / agg.wsum).tolist(),
        }

    def handle(self, line):
        try:
            req = json.loads(line)
            if req.get("cmd") not in ("time", "check"):
                raise ValueError(f"unknown cmd {req.get('cmd')!r}")
            method = getattr(self, req["cmd"])
            return method(req["peer"], int(req["strip"]), int(req["tiles"]))
        except Exception as err:  # every failure is answered, and serving goes on
            return {"error": f"{type(err).__name__}: {err}"}


def serve(work):
    import onnxruntime
    import torch

    server = Server(work)
    versions = {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__}
    print(json.dumps({"ready": True, **versions, "numpy": np.__version__}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(server.handle(line)), flush=True)


def write_work(work, dims, gated, tiles, seed=0):
    """Writes a random head and embeddings in the Rust side's work-directory layout."""
    d, h, k = dims
    rng = np.random.default_rng(seed)
    shapes = {"fc": (h, d), "attention_a": (k, h), "attention_c": (1, k), "tile": (1, h)}
    if gated:
        shapes["attention_b"] = (k, h)
    arrays = {}
    for name, (rows, cols) in shapes.items():
        arrays[f"{name}_weight"] = rng.normal(0, cols**-0.5, (rows, cols))
        arrays[f"{name}_bias"] = rng.normal(0, 0.1, rows)
    arrays["embeddings"] = np.abs(rng.normal(0, 1, (tiles, d)))
    entries = {}
    for name, arr in arrays.items():
        arr.astype("<f4").tofile(Path(work) / f"{name}.f32")
        entries[name] = {"file": f"{name}.f32", "shape": list(arr.shape)}
    head = {"input_dim": d, "hidden_dim": h, "attention_dim": k, "gated": gated}
    head["embeddings"] = entries.pop("embeddings")
    (Path(work) / "head.json").write_text(json.dumps({**head, "tensors": entries}))


def reference(work, tiles):
    """Float64 numpy logits, probabilities and slide embedding over the first tiles."""
    cfg, t, x = load_head(work)
    x = x[:tiles]
    t = {k: v.astype(np.float64) for k, v in t.items()}
    h = np.maximum(x @ t["fc_weight"].T + t["fc_bias"], 0)
    a = np.tanh(h @ t["attention_a_weight"].T + t["attention_a_bias"])
    if cfg["gated"]:
        a *= 1 / (1 + np.exp(-(h @ t["attention_b_weight"].T + t["attention_b_bias"])))
    s = (a @ t["attention_c_weight"].T + t["attention_c_bias"])[:, 0]
    p = 1 / (1 + np.exp(-(h @ t["tile_weight"].T + t["tile_bias"])[:, 0]))
    e = np.exp(s - s.max())
    return s, p, e @ h / e.sum()


class Client:
    """A `serve` subprocess on one work directory, for the self-test."""

    def __init__(self, work):
        cmd = [sys.executable, __file__, "serve", "--dir", work]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        print(self.proc.stdout.readline().strip())

    def ask(self, req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def check_peers(client, work, total, label):
    """Checks both peers on all but the last 5 tiles, so the last strip is cut short."""
    tiles = total - 5
    keys = ["attention_logits", "tile_probabilities", "slide_embedding"]
    want = dict(zip(keys, reference(work, tiles), strict=True))
    limits = dict(zip(keys, [1e-4, 1e-5, 1e-4], strict=True))
    for peer in ("ort", "torch"):
        for strip in (1, 7, 64, tiles, total):
            got = client.ask({"cmd": "check", "peer": peer, "strip": strip, "tiles": tiles})
            assert all(len(got[key]) == len(want[key]) for key in keys), got.keys()
            diffs = {key: np.abs(np.array(got[key]) - want[key]).max() for key in keys}
            ok = all(diffs[key] < limits[key] for key in keys)
            text = " ".join(f"{key} {diff:.1e}" for key, diff in diffs.items())
            print(f"{label} {peer:5} strip {strip:5}: max diff {text} {'ok' if ok else 'FAIL'}")
            assert ok
    assert "error" in client.ask({"cmd": "nope"})
    assert "error" in client.ask({"cmd": "time", "peer": "ort", "strip": 1, "tiles": total + 1})


def bench_peers(client, tiles):
    for strip in (1, 16, 64, 256, 4096):
        for peer in ("ort", "torch"):
            req = {"cmd": "time", "peer": peer, "strip": strip, "tiles": tiles}
            best = min(client.ask(req)["seconds"] for _ in range(5))
            print(f"{peer:5} strip {strip:5}: {tiles / best:10.0f} tiles/s (best of 5)")


def selftest():
    cases = [
        ((64, 32, 16), True, 1000),
        ((64, 32, 16), False, 1000),
        ((1024, 512, 256), True, 8192),
    ]
    for dims, gated, tiles in cases:
        with tempfile.TemporaryDirectory() as work:
            write_work(work, dims, gated, tiles)
            export_onnx(work, Path(work) / "head.onnx")
            client = Client(work)
            check_peers(client, work, tiles, f"{dims} gated={gated}")
            if dims[0] == 1024:
                bench_peers(client, tiles)
            client.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export-onnx")
    export.add_argument("--dir", required=True)
    export.add_argument("--out")
    sub.add_parser("serve").add_argument("--dir", required=True)
    sub.add_parser("selftest")
    args = parser.parse_args()
    if args.command == "export-onnx":
        export_onnx(args.dir, args.out or str(Path(args.dir) / "head.onnx"))
    elif args.command == "serve":
        serve(args.dir)
    else:
        selftest()


if __name__ == "__main__":
    main()
