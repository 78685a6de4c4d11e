"""Writes CLAM-SB and MS-CLAM checkpoints with the real torch.save, and what PyTorch computes
with them on random bags: the expected numbers of data/tests/convert.rs.

    python clam_checkpoints.py OUT_DIR

The networks below reproduce the module trees (and so the state_dict key names) of
mahmoodlab/CLAM `models/model_clam.py` (current: `dropout` a float and the first block
always holding an `nn.Dropout`; 2020-2023: `dropout` a bool and the `nn.Dropout` only when
set) and of paul-tourniaire/MS-CLAM (one `TileClassifier`), the `nn.DataParallel` wrapping
CLAM's old `relocate()` applied to the attention network, and the SmoothTop1SVM instance
loss's `labels` buffer. Only `forward` in eval mode is needed here.

For each case OUT_DIR gets <name>.pt (the checkpoint), <name>.bag.f32 (N x D tiles,
little-endian float32) and an entry of OUT_DIR/cases.json:
{"name", "file", "n", "d", "tumor_class", "slide_probabilities", "attention" (softmax),
"tile_probabilities"} or, for checkpoints the converter must refuse, {"name", "file",
"error"} (a substring of the expected message).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = Path(sys.argv[1])
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
CASES = []


class AttnNet(nn.Module):
    """CLAM's plain attention: `module` = Linear, Tanh, [Dropout], Linear."""

    def __init__(self, L, D, dropout):
        super().__init__()
        layers = [nn.Linear(L, D), nn.Tanh()]
        if dropout:
            layers.append(nn.Dropout(0.25))
        layers.append(nn.Linear(D, 1))
        self.module = nn.Sequential(*layers)

    def forward(self, x):
        return self.module(x)


class AttnNetGated(nn.Module):
    """CLAM's gated attention: attention_a (Linear, Tanh), attention_b (Linear, Sigmoid),
    attention_c."""

    def __init__(self, L, D, dropout):
        super().__init__()
        a = [nn.Linear(L, D), nn.Tanh()]
        b = [nn.Linear(L, D), nn.Sigmoid()]
        if dropout:
            a.append(nn.Dropout(0.25))
            b.append(nn.Dropout(0.25))
        self.attention_a = nn.Sequential(*a)
        self.attention_b = nn.Sequential(*b)
        self.attention_c = nn.Linear(D, 1)

    def forward(self, x):
        return self.attention_c(self.attention_a(x) * self.attention_b(x))


class SmoothTop1SVMBuffers(nn.Module):
    """What CLAM's SmoothTop1SVM instance loss leaves in a state_dict: a `labels` buffer."""

    def __init__(self, n_classes):
        super().__init__()
        self.register_buffer("labels", torch.from_numpy(np.arange(n_classes)))


class TileClassifier(nn.Module):
    """MS-CLAM's single instance classifier: `network` = Sequential(Linear(H, 2))."""

    def __init__(self, H):
        super().__init__()
        self.network = nn.Sequential(nn.Linear(H, 2))

    def forward(self, x):
        return self.network(x)


class ClamLike(nn.Module):
    def __init__(self, *, gate=True, size=(1024, 512, 256), dropout=False, n_classes=2,
                 style="clam", svm=False, wrap_attention=False):
        super().__init__()
        d, h, k = size
        fc = [nn.Linear(d, h), nn.ReLU()]
        # Current CLAM always appends nn.Dropout(dropout); older CLAM and MS-CLAM only when set.
        if style == "clam" or dropout:
            fc.append(nn.Dropout(0.25 if dropout else 0.0))
        fc.append((AttnNetGated if gate else AttnNet)(h, k, bool(dropout)))
        self.attention_net = nn.Sequential(*fc)
        if wrap_attention:
            self.attention_net = nn.DataParallel(self.attention_net)
        self.classifiers = nn.Linear(h, n_classes)
        if style == "msclam":
            self.instance_classifiers = TileClassifier(h)
        else:
            self.instance_classifiers = nn.ModuleList([nn.Linear(h, 2) for _ in range(n_classes)])
        if svm:
            self.instance_loss_fn = SmoothTop1SVMBuffers(2)
        self.style = style
        # Random, not CLAM's init: every weight matters to the comparison.
        for p in self.parameters():
            nn.init.normal_(p, std=0.05)

    def forward(self, x, tumor_class):
        net = self.attention_net.module if isinstance(self.attention_net, nn.DataParallel) else self.attention_net
        hidden = x
        for layer in list(net)[:-1]:
            hidden = layer(hidden)
        a = net[-1](hidden).t()  # 1 x N
        attention = F.softmax(a, dim=1)
        slide = F.softmax(self.classifiers(attention @ hidden), dim=1)[0]
        tile_net = self.instance_classifiers if self.style == "msclam" else self.instance_classifiers[tumor_class]
        tiles = F.softmax(tile_net(hidden), dim=1)[:, 1]
        return slide, attention[0], tiles


def case(name, model, *, n=60, tumor_class=1, half=False, wrap_whole=False, save=None):
    model.eval()
    d = model.classifiers.in_features
    net = model.attention_net.module if isinstance(model.attention_net, nn.DataParallel) else model.attention_net
    d = net[0].in_features
    if half:
        model = model.half().float()  # the f16 weights, computed with in f32
    bag = torch.randn(n, d)
    with torch.no_grad():
        slide, attention, tiles = model(bag, tumor_class)
    state = model.state_dict()
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    if wrap_whole:
        state = {f"module.{k}": v for k, v in state.items()}
    file = f"{name}.pt"
    torch.save(save(state) if save else state, OUT / file)
    (OUT / f"{name}.bag.f32").write_bytes(bag.numpy().astype("<f4").tobytes())
    CASES.append({"name": name, "file": file, "n": n, "d": d, "tumor_class": tumor_class,
                  "slide_probabilities": slide.tolist(), "attention": attention.tolist(),
                  "tile_probabilities": tiles.tolist()})


def refused(name, obj, error):
    torch.save(obj, OUT / f"{name}.pt")
    CASES.append({"name": name, "file": f"{name}.pt", "error": error})


# CLAM-SB, current code: small and big, gated and plain, with and without dropout.
case("clam_small_gated", ClamLike())
case("clam_small_gated_dropout", ClamLike(dropout=True))
case("clam_small_plain", ClamLike(gate=False))
case("clam_small_plain_dropout", ClamLike(gate=False, dropout=True))
case("clam_big_gated", ClamLike(size=(1024, 512, 384)))
# Older CLAM (dropout a bool: no Dropout module unless set), UNI-sized features, 3 classes
# with class 2 as the tumor class.
case("clam_old_uni", ClamLike(style="clam_old", size=(1536, 512, 256)))
case("clam_old_dropout_3_classes", ClamLike(style="clam_old", dropout=True, n_classes=3), tumor_class=2)
# Multi-GPU leftovers: the attention network inside nn.DataParallel (old CLAM's relocate())
# and a whole-model DataParallel; SmoothTop1SVM's buffer in the state_dict.
case("clam_data_parallel_attention", ClamLike(gate=False, wrap_attention=True, svm=True))
case("clam_data_parallel_model", ClamLike(svm=True), wrap_whole=True)
# MS-CLAM: one instance classifier, tiny size.
case("msclam_small", ClamLike(style="msclam", svm=True))
case("msclam_tiny_dropout", ClamLike(style="msclam", size=(512, 256, 128), dropout=True))
# float16 weights; a checkpoint saved as {"model": state_dict, "epoch": ...}.
case("clam_small_gated_f16", ClamLike(), half=True)
case("msclam_nested", ClamLike(style="msclam"), save=lambda s: {"model": s, "epoch": 20, "best_auc": 0.93})

# Checkpoints the converter must refuse, each with what its message must say.
mb = ClamLike().state_dict()
mb = {k: v for k, v in mb.items() if not k.startswith("classifiers")}
mb["classifiers.0.weight"] = torch.randn(1, 512)
mb["classifiers.0.bias"] = torch.randn(1)
mb["classifiers.1.weight"] = torch.randn(1, 512)
mb["classifiers.1.bias"] = torch.randn(1)
refused("clam_mb", mb, "CLAM-MB")
refused("whole_module", ClamLike(), "state_dict")
extra = dict(ClamLike().state_dict())
extra["projector.weight"] = torch.randn(4, 4)
refused("unknown_key", extra, "projector.weight")
wrong = dict(ClamLike().state_dict())
wrong["classifiers.weight"] = torch.randn(2, 500)
refused("wrong_shape", wrong, "classifiers.weight")
missing = dict(ClamLike().state_dict())
del missing["attention_net.3.attention_b.0.weight"]
refused("missing_key", missing, "attention_b")
refused("not_a_checkpoint", {"epoch": 3}, "state_dict")

(OUT / "cases.json").write_text(json.dumps(CASES))
print(f"{len(CASES)} cases in {OUT}")
