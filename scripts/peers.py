#!/usr/bin/env python3
"""The peers of the speed issue on the same shapes as `logit-adjust bench`:
PyTorch eager, torch.compile and Liger-Kernel, forward+backward of
F.cross_entropy(logits + tau * log_prior, y); the post-hoc 16-tau argmax in
eager PyTorch; and torch's own copy of the logits (the floor).

    peers.py [--quick]                       time the peers, print JSON
    peers.py --table BENCH.json PEERS.json   one table of ours beside theirs

Timing: CUDA events around each call, after warm-up, median of REPS; the
inputs rotate through enough copies to exceed the L2 cache (about 60 MB),
so no call finds its logits in cache. Random inputs, never zeros.
"""

import json
import statistics
import sys

SHAPES = [(262_144, 10), (16_384, 1000), (8192, 8142), (2048, 32_768), (256, 262_144)]
REPS = 20
TAU = 1.0


def timed(fn, inputs, reps=REPS):
    import torch

    for k in range(3):
        fn(*inputs[k % len(inputs)])
    torch.cuda.synchronize()
    times = []
    for r in range(reps):
        args = inputs[r % len(inputs)]
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(quick):
    import torch
    import torch.nn.functional as F

    try:
        from liger_kernel.transformers.functional import liger_cross_entropy
    except Exception as e:  # noqa: BLE001 - report and go on without it
        liger_cross_entropy = None
        liger_error = str(e)
    dev = torch.device("cuda")
    rows = []
    for n, c in SHAPES:
        if quick:
            n = max(1, n // 8)
        nbytes = n * c * 4
        copies = max(2, -(-120_000_000 // nbytes))
        g = torch.Generator(device=dev).manual_seed(n * 31 + c)
        counts = torch.clamp(1000.0 * 100.0 ** (-torch.arange(c, device=dev) / c), min=1.0)
        log_prior = torch.log(counts / counts.sum())
        inputs = []
        for _ in range(copies):
            x = (torch.rand(n, c, device=dev, generator=g) * 20 - 10).requires_grad_(True)
            y = torch.randint(0, c, (n,), device=dev, generator=g)
            inputs.append((x, y))

        def eager(x, y):
            loss = F.cross_entropy(x + TAU * log_prior, y)
            loss.backward()
            x.grad = None

        compiled_loss = torch.compile(lambda x, y: F.cross_entropy(x + TAU * log_prior, y))

        def compiled(x, y):
            compiled_loss(x, y).backward()
            x.grad = None

        def liger(x, y):
            liger_cross_entropy(x + TAU * log_prior, y).backward()
            x.grad = None

        taus = torch.arange(16, device=dev) * 0.125
        adjust = taus[:, None] * log_prior[None, :]

        def posthoc16(x, _y):
            with torch.no_grad():
                for t in range(16):
                    (x - adjust[t]).argmax(dim=1)

        def copy(x, _y):
            with torch.no_grad():
                torch.empty_like(x).copy_(x)

        row = {"n": n, "c": c, "bytes": nbytes}
        row["torch_copy_ms"] = timed(copy, inputs)
        row["eager_ms"] = timed(eager, inputs)
        try:
            row["compile_ms"] = timed(compiled, inputs)
        except Exception as e:  # noqa: BLE001
            row["compile_error"] = str(e)[:200]
        if liger_cross_entropy is not None:
            try:
                row["liger_ms"] = timed(liger, inputs)
            except Exception as e:  # noqa: BLE001
                row["liger_error"] = str(e)[:200]
        else:
            row["liger_error"] = liger_error[:200]
        row["eager_posthoc16_ms"] = timed(posthoc16, inputs)
        print(f"  {n} x {c}: {row}", file=sys.stderr)
        rows.append(row)
        del inputs
        torch.cuda.empty_cache()
    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "timing": "cuda-events",
        "rows": rows,
    }


def table(bench_path, peers_path):
    bench = json.load(open(bench_path))
    peers = json.load(open(peers_path))
    by_shape = {(r["n"], r["c"]): r for r in peers.get("rows", [])}
    print(f"adapter: {bench['adapter']} ({bench['backend']}), timing {bench['timing']}")
    if "device" in peers:
        print(f"peers: {peers['device']}, torch {peers['torch']}, {peers['timing']}")
    else:
        print(f"peers: {peers.get('peers', 'none')}")
    head = f"{'op':16} {'N':>7} {'C':>7} {'ours ms':>9} {'GB/s':>8} {'vs copy':>8} {'x unfused':>9}"
    head += f" {'eager ms':>9} {'x eager':>8} {'compile':>8} {'x comp':>7} {'liger':>8} {'x liger':>8}"
    print(head)
    for r in bench["rows"]:
        p = by_shape.get((r["n"], r["c"]), {})
        peer = {"fused": ("eager_ms", "compile_ms", "liger_ms"), "posthoc16": ("eager_posthoc16_ms", None, None)}
        # The peers run f32 logits: a half row is ours alone.
        dtype = r.get("dtype", "f32")
        keys = peer.get(r["op"], (None, None, None)) if dtype == "f32" else (None, None, None)
        op = r["op"] if dtype == "f32" else f"{r['op']}/{dtype}"
        line = f"{op:16} {r['n']:>7} {r['c']:>7} {r['p50_ms']:>9.3f} {r['gb_per_s']:>8.1f}"
        # A ratio with nothing to compare (no unfused backward) is null.
        for key, width in (("time_vs_shader_copy", 7), ("speedup_vs_unfused", 8)):
            v = r.get(key)
            line += f" {v:>{width}.2f}x" if v is not None else f" {'-':>{width + 1}}"
        for k in keys:
            if k and k in p:
                line += f" {p[k]:>9.3f} {p[k] / r['p50_ms']:>7.2f}x"
            else:
                line += f" {'-':>9} {'-':>8}"
        print(line)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--table":
        table(sys.argv[2], sys.argv[3])
    else:
        print(json.dumps(measure("--quick" in sys.argv)))
