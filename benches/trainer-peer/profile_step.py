"""Where one paired training step's time goes on the CPU, per libtorch operator.

The step below does the operators that both MS-CLAM implementations run for one paired step
(a tumor and a normal slide of --tiles tiles each, MS-CLAM small: D 1024, H 512, K 256, gated
attention, dropout 0.25 after the hidden layer and both attention branches, attention pooling,
the slide classifier, --b tiles through the tile classifier, the attention loss, Adam). It is a
stand-in for the profile of either implementation, not a copy of one; msclam-train runs the
same operators through tch.

It prints, for libtorch's dropout (`torch.nn.functional.dropout`, as the published code) and
for the byte-mask dropout of msclam-train (`trainer/src/model.rs`), the median seconds per
step over interleaved rounds, then torch.profiler's per-operator table of the faster one, and
the matrix products' share and speed against the FMA peak given with --peak-gflops
(scripts/bench prints the core's peak).

    taskset -c 0 $MSCLAM_VENV/bin/python benches/trainer-peer/profile_step.py --threads 1
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

D, H, K = 1024, 512, 256
P = 0.25


def byte_mask_dropout(x):
    """msclam-train's dropout: one byte of full-range random 64-bit words per value."""
    n = x.numel()
    words = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-(2**63), None)
    keep = words.view(torch.uint8)[:n].view(x.shape) < round((1 - P) * 256)
    return x * (keep.to(x.dtype) * (1 / (1 - P)))


def libtorch_dropout(x):
    return F.dropout(x, P, True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tiles", type=int, default=2100, help="tiles per slide (two slides a step)")
    ap.add_argument("--b", type=int, default=1024, help="tiles through the tile classifier per slide")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--peak-gflops", type=float, default=0.0, help="the core's FMA peak, for the share")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fc, att_a, att_b, att_c = nn.Linear(D, H), nn.Linear(H, K), nn.Linear(H, K), nn.Linear(K, 1)
    classifier, tile_classifier = nn.Linear(H, 2), nn.Linear(H, 2)
    modules = (fc, att_a, att_b, att_c, classifier, tile_classifier)
    params = [p for m in modules for p in m.parameters()]
    adam = torch.optim.Adam(params, lr=2e-4, weight_decay=1e-5)
    slides = [torch.randn(args.tiles, D) for _ in range(2)]
    b = min(args.b, args.tiles)

    def step(drop):
        adam.zero_grad()
        loss = 0.0
        for label, x in enumerate(slides):
            h = drop(F.relu(fc(x)))
            gated = drop(torch.tanh(att_a(h))) * drop(torch.sigmoid(att_b(h)))
            attention = F.softmax(att_c(gated).squeeze(1), 0)
            logits = classifier(attention.unsqueeze(0) @ h)
            loss = loss + F.cross_entropy(logits, torch.tensor([label]))
            top = torch.topk(attention.detach(), b).indices
            tiles = tile_classifier(h.index_select(0, top))
            loss = loss + F.cross_entropy(tiles, torch.full((b,), label, dtype=torch.long))
            loss = loss + (attention * torch.log(attention + 1e-10)).sum()
        loss.backward()
        adam.step()

    variants = {"libtorch dropout": libtorch_dropout, "byte-mask dropout": byte_mask_dropout}
    times = {name: [] for name in variants}
    for drop in variants.values():
        step(drop)
    for _ in range(args.rounds):
        for name, drop in variants.items():
            start = time.perf_counter()
            for _ in range(4):
                step(drop)
            times[name].append((time.perf_counter() - start) / 4)
    print(f"{args.threads} thread(s), 2 slides x {args.tiles} tiles per step, {args.rounds} rounds")
    for name, t in times.items():
        t.sort()
        print(f"  {name}: {t[len(t) // 2] * 1e3:.1f} ms/step (range {t[0] * 1e3:.1f}-{t[-1] * 1e3:.1f})")

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            step(byte_mask_dropout)
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=20))
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm"))
    n = 2 * args.tiles
    # Forward D->H and H->2K; backward: the weight gradients of both and the input gradient
    # of the attention layers (the features need none).
    flops = 2 * n * (D * H + H * 2 * K) + 2 * n * (D * H + H * 2 * K) + 2 * n * (2 * K * H)
    per_step = matmul / 5 / 1e6
    print(f"matrix products: {matmul / total:.0%} of the step, {per_step * 1e3:.1f} ms/step "
          f"for {flops / 1e9:.1f} GFLOP = {flops / per_step / 1e9:.0f} GFLOP/s", end="")
    if args.peak_gflops > 0:
        print(f" ({flops / per_step / 1e9 / args.peak_gflops:.0%} of the {args.peak_gflops:.0f} GFLOP/s peak)")
    else:
        print()


if __name__ == "__main__":
    main()
