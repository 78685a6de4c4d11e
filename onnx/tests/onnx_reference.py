"""The independent side of msclam-onnx's tests: ONNX Runtime and PyTorch.

    python onnx_reference.py heads WORK
        WORK holds tile_head.onnx and slide_head.onnx (exported by msclam), bag.f32 (N x D
        float32, little-endian) and bag.json {"n", "d", "strips"}. Checks both graphs with
        onnx.checker, runs them with ONNX Runtime (one thread; the tile head strip by strip,
        the slide head over the concatenated outputs) and writes WORK/ort.json
        {"attention_logit", "tile_probability", "slide_probabilities", "attention"}.

    python onnx_reference.py encoders WORK
        Writes two tile encoders exported to ONNX by PyTorch (the TorchScript exporter,
        dynamic batch): small_cnn.onnx (64 x 64 tiles, 48-d, BGR input, its own mean/std) and
        resnet_trunc.onnx (a ResNet-50-style stem and bottleneck stages truncated after the
        third, as CLAM's resnet50_trunc, at 224 x 224, 1024-d), <name>.tiles.u8 (interleaved RGB,
        uint8) and <name>.embeddings.f32 (PyTorch's) for each, and WORK/encoders.json: per
        encoder its options, the embeddings PyTorch computes for the tiles, and ONNX Runtime's
        tiles/s on one thread.

    python onnx_reference.py ort-speed WORK NAME TILE_SIZE BATCH SECONDS
        ONNX Runtime's tiles/s on WORK/NAME.onnx, one thread (scripts/bench-encoder).
"""

import json
import sys
import time
from pathlib import Path

import numpy as np


def heads(work):
    import onnx
    import onnxruntime as ort

    for name in ("tile_head.onnx", "slide_head.onnx"):
        onnx.checker.check_model(onnx.load(str(work / name)), full_check=True)
    meta = json.loads((work / "bag.json").read_text())
    bag = np.fromfile(work / "bag.f32", dtype="<f4").reshape(meta["n"], meta["d"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    tile = ort.InferenceSession(str(work / "tile_head.onnx"), options, providers=["CPUExecutionProvider"])
    slide = ort.InferenceSession(str(work / "slide_head.onnx"), options, providers=["CPUExecutionProvider"])
    logits, probabilities, hidden = [], [], []
    for strip in np.array_split(bag, meta["strips"]):
        a, p, h = tile.run(["attention_logit", "tile_probability", "hidden"], {"embeddings": strip})
        logits.append(a)
        probabilities.append(p)
        hidden.append(h)
    logits, hidden = np.concatenate(logits), np.concatenate(hidden)
    slide_probabilities, attention = slide.run(
        ["slide_probabilities", "attention"], {"attention_logit": logits, "hidden": hidden})
    (work / "ort.json").write_text(json.dumps({
        "attention_logit": logits[:, 0].tolist(),
        "tile_probability": np.concatenate(probabilities).tolist(),
        "slide_probabilities": slide_probabilities[0].tolist(),
        "attention": attention[:, 0].tolist(),
    }))


def encoders(work):
    import onnxruntime as ort
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    class SmallCnn(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

        def forward(self, x):
            return torch.flatten(self.features(x), 1)

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, cout, stride):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    class ResNetTrunc(nn.Module):
        """ResNet-50's stem and first three stages (one bottleneck each here, to keep the
        test short), then global average pooling: 1024-d like CLAM's resnet50_trunc."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                                      nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1))
            self.stages = nn.Sequential(Bottleneck(64, 64, 256, 1), Bottleneck(256, 128, 512, 2),
                                        Bottleneck(512, 256, 1024, 2))
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            return self.pool(self.stages(self.stem(x)))  # [B, 1024, 1, 1]

    specs = [
        ("small_cnn", SmallCnn(), 64, "bgr", [0.70, 0.55, 0.75], [0.15, 0.20, 0.18]),
        ("resnet_trunc", ResNetTrunc(), 224, "rgb", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ]
    out = {}
    for name, net, size, order, mean, std in specs:
        # Non-trivial batch-norm statistics, then inference mode.
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        net.eval()
        path = work / f"{name}.onnx"
        torch.onnx.export(net, torch.randn(2, 3, size, size), str(path), dynamo=False,
                          input_names=["image"], output_names=["embedding"],
                          dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17)
        # Tiles like a scanner's: smooth colour fields with noise, as interleaved RGB bytes.
        n = 21
        yy, xx = np.mgrid[0:size, 0:size] / size
        tiles = np.stack([
            np.clip(np.stack([200 - 80 * xx * (i % 3), 120 + 60 * yy, 180 - 50 * xx * yy], -1)
                    + rng.normal(0, 25, (size, size, 3)), 0, 255)
            for i in range(n)]).astype(np.uint8)
        tiles.tofile(work / f"{name}.tiles.u8")
        x = tiles.astype(np.float32) / 255.0
        if order == "bgr":
            x = x[..., ::-1]
        x = (x - np.array(mean, np.float32)) / np.array(std, np.float32)
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        with torch.no_grad():
            embeddings = net(x).reshape(n, -1)
        embeddings.numpy().astype("<f4").tofile(work / f"{name}.embeddings.f32")
        # ONNX Runtime on one thread, batches of 16 (best of 5 rounds).
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        batch = x[:16].numpy()
        ort_out = session.run(None, {"image": batch})[0].reshape(16, -1)
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            session.run(None, {"image": batch})
            best = min(best, time.perf_counter() - start)
        out[name] = {
            "tile_size": size, "channel_order": order, "mean": mean, "std": std, "n": n,
            "dim": embeddings.shape[1], "embeddings": embeddings.reshape(-1).tolist(),
            "ort_largest_difference": float(np.abs(ort_out - embeddings[:16].numpy()).max()),
            "ort_tiles_per_second": 16 / best,
        }
    (work / "encoders.json").write_text(json.dumps(out))


def ort_speed(work, name, tile_size, batch, seconds):
    """Prints `onnxruntime <tiles/s>` for WORK/NAME.onnx on one thread (scripts/bench-encoder)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(work / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
    i = np.arange(batch * tile_size * tile_size * 3)
    rgb = (96 + (i * 7919 % 97) + (i // (tile_size * 3)) % 40).astype(np.uint8)
    x = (rgb.reshape(batch, tile_size, tile_size, 3).astype(np.float32) / 255.0 - 0.45) / 0.22
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    session.run(None, {"image": x})
    start, tiles = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        session.run(None, {"image": x})
        tiles += batch
    print(f"onnxruntime {tiles / (time.perf_counter() - start):.2f}")


if __name__ == "__main__":
    command, work = sys.argv[1], Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    if command == "ort-speed":
        ort_speed(work, sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]))
    else:
        {"heads": heads, "encoders": encoders}[command](work)
