#!/usr/bin/env python3
"""An independent implementation of docs/MATH.md sections 1-7 in numpy, checked
against `logit-adjust loss` and `logit-adjust posthoc` (GPU and --cpu) on
files the tool has never seen: fresh random shapes, priors, labels and
options every run.

Usage: python3 tests/independent/check_loss.py [path/to/logit-adjust] [--rounds K]
Exits non-zero on any disagreement beyond the core issue's tolerances.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np


def la_loss(f, y, log_prior, tau, reduction, ignore_index, eps, s=1.0, lam=0.0, w=None, pytorch=False):
    """Per-row losses, reduced loss and gradient of the reduced loss, with
    the logits scaled by s (z = s (f + tau log pi)), the z-loss lam LSE^2,
    class weights w, and label smoothing either weighting the whole row by
    w_y or, as PyTorch's F.cross_entropy(weight=w, label_smoothing=eps),
    each class's term by w_c."""
    n, c = f.shape
    w = np.ones(c) if w is None else w.astype(np.float32).astype(np.float64)
    z = s * (f.astype(np.float64) + (tau * log_prior).astype(np.float32).astype(np.float64))
    valid = y != ignore_index
    yv = np.where(valid, y, 0)
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    z_y = z[np.arange(n), yv]
    w_y = w[yv]
    p = np.exp(z - lse[:, None])
    hit = np.zeros((n, c))
    hit[np.arange(n), yv] = 1.0
    if pytorch:
        # PyTorch: (1-eps) nll(weight) + (eps/C) * (-(log_softmax * weight).sum(1))
        logp = z - lse[:, None]
        per_row = (1 - eps) * w_y * (lse - z_y) - eps / c * (logp * w[None, :]).sum(axis=1)
        gz = (1 - eps) * w_y[:, None] * (p - hit) + eps / c * (w.sum() * p - w[None, :])
    else:
        per_row = w_y * ((1 - eps) * (lse - z_y) + eps * (lse - z.mean(axis=1)))
        gz = w_y[:, None] * (p - ((1 - eps) * hit + eps / c))
    per_row = np.where(valid, per_row + lam * lse**2, 0.0)
    # d/df = s d/dz; d(lam LSE^2)/dz_c = 2 lam LSE p_c
    grad = np.where(valid[:, None], s * (gz + 2 * lam * lse[:, None] * p), 0.0)
    if reduction == "none":
        return per_row, None, grad
    if reduction == "sum":
        return per_row, per_row.sum(), grad
    denom = valid.sum() if reduction == "mean" else w_y[valid].sum()
    if denom == 0:
        return per_row, 0.0, grad * 0
    return per_row, per_row.sum() / denom, grad / denom


def posthoc_metrics(f, y, counts, taus):
    """Balanced error etc. per tau, predictions for each tau (numpy argmax:
    ties to the smallest index). The adjustment is rounded to float32 once,
    as docs/MATH.md's batched correction does on both paths."""
    log_prior = np.log(counts / counts.sum())
    c = f.shape[1]
    out = []
    for tau in taus:
        g = f - (tau * log_prior).astype(np.float32)
        pred = g.argmax(axis=1)
        total = np.bincount(y, minlength=c)
        correct = np.bincount(y[pred == y], minlength=c)
        present = total > 0
        recall = correct[present] / total[present]
        groups = {}
        for name, keep in [("many", counts > 100), ("medium", (counts >= 20) & (counts <= 100)), ("few", counts < 20)]:
            sel = keep & present
            groups[name] = float((correct[sel] / total[sel]).mean()) if sel.any() else None
        out.append(dict(tau=tau, pred=pred, balanced_error=1 - recall.mean(), accuracy=correct.sum() / len(y),
                        worst=recall.min(), **groups))
    return out


def check_posthoc(tool, rng, d, r):
    n = int(rng.choice([1, 50, 5000]))
    c = int(rng.choice([2, 10, 1000]))
    counts = np.maximum(np.floor(1000 * 100.0 ** (-np.arange(c) / max(c - 1, 1))), 1).astype(np.int64)
    f = rng.normal(size=(n, c)).astype(np.float32) * 3
    f[rng.uniform(size=(n, c)) < 0.01] = np.inf
    f[rng.uniform(size=(n, c)) < 0.01] = -np.inf
    y = rng.integers(0, c, size=n)
    paths = {k: os.path.join(d, f"ph_{k}{r}.npy") for k in ["l", "y", "n", "p"]}
    np.save(paths["l"], f)
    np.save(paths["y"], y)
    np.save(paths["n"], counts)
    taus = [0.0, 0.5, 1.0, 1.5, 2.0]
    want = posthoc_metrics(f, y, counts, taus)
    # The first tau within 1e-12 of the lowest balanced error (fractions
    # equal as rationals can differ in the last bit with the summation order).
    low = min(w["balanced_error"] for w in want)
    best = next(k for k, w in enumerate(want) if w["balanced_error"] <= low + 1e-12 * max(1.0, abs(low)))
    failures = 0
    for cpu in [False, True]:
        cmd = [tool, "posthoc", "--logits", paths["l"], "--labels", paths["y"], "--class-counts", paths["n"],
               "--taus", ",".join(map(str, taus)), "--out-pred", paths["p"], "--json"] + (["--cpu"] if cpu else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        what = f"posthoc round {r}: N={n} C={c} cpu={cpu}"
        if out.returncode != 0:
            print(f"FAIL {what}: {out.stderr.strip()}")
            failures += 1
            continue
        got = json.loads(out.stdout)
        ok = got["best_tau"] == taus[best]
        for g, w in zip(got["results"], want):
            ok &= abs(g["balanced_error"] - w["balanced_error"]) <= 1e-9
            ok &= abs(g["accuracy"] - w["accuracy"]) <= 1e-9
            ok &= abs(g["worst_class_recall"] - w["worst"]) <= 1e-9
            for k in ["many", "medium", "few"]:
                ok &= (g[k] is None) == (w[k] is None) and (g[k] is None or abs(g[k] - w[k]) <= 1e-9)
        pred = np.load(paths["p"])
        ok &= pred.dtype == np.int64 and bool(np.array_equal(pred, want[best]["pred"]))
        print(f"{'ok  ' if ok else 'FAIL'} {what} on {got['adapter']}: best tau {got['best_tau']}, "
              f"balanced error {got['results'][best]['balanced_error']:.6f}")
        failures += not ok
    return failures


def main():
    args = sys.argv[1:]
    rounds = 6
    if "--rounds" in args:
        i = args.index("--rounds")
        rounds = int(args[i + 1])
        del args[i : i + 2]
    tool = args[0] if args else "target/debug/logit-adjust"
    seed = int.from_bytes(os.urandom(4), "little")
    rng = np.random.default_rng(seed)
    print(f"independent check of {tool}, seed {seed}")
    failures = 0
    checks = 0
    with tempfile.TemporaryDirectory() as d:
        for r in range(rounds):
            n = int(rng.choice([1, 7, 300, 2000]))
            c = int(rng.choice([1, 2, 10, 1000, 5000]))
            tau = float(rng.choice([0.0, 1.0, 2.5]))
            reduction = str(rng.choice(["none", "sum", "mean", "weighted-mean"]))
            eps = float(rng.choice([0.0, 0.1]))
            # Half the rounds with a logit scale and a z-loss; a third with
            # class weights, half of those smoothed as PyTorch smooths.
            s, lam = (1.0, 0.0) if r % 2 == 0 else (float(rng.choice([0.5, 30.0])), float(rng.choice([0.0, 1e-4])))
            weighted = r % 3 == 1
            w = rng.uniform(0.2, 3.0, size=c).astype(np.float32) if weighted else None
            pytorch = weighted and bool(rng.integers(0, 2))
            if pytorch:
                eps = 0.1
            f = (rng.uniform(-50, 50, size=(n, c))).astype(np.float32)
            if s != 1.0:
                f = (f / 10).astype(np.float32)
            counts = np.floor(1000 * 100.0 ** (-np.arange(c) / max(c - 1, 1))).astype(np.int64)
            counts = np.maximum(counts, 1)
            y = rng.integers(0, c, size=n).astype(rng.choice([np.int32, np.int64]))
            y[rng.uniform(size=n) < 0.1] = -100
            paths = {k: os.path.join(d, f"{k}{r}.npy") for k in ["l", "y", "n", "w", "ol", "og"]}
            if weighted:
                np.save(paths["w"], w)
            np.save(paths["l"], f)
            np.save(paths["y"], y)
            np.save(paths["n"], counts)
            log_prior = np.log(counts / counts.sum())
            want_rows, want_loss, want_grad = la_loss(
                f, y.astype(np.int64), log_prior, tau, reduction, -100, eps, s, lam, w, pytorch)
            for cpu in [False, True]:
                cmd = [tool, "loss", "--logits", paths["l"], "--labels", paths["y"],
                       "--class-counts", paths["n"], "--tau", str(tau), "--reduction", reduction,
                       "--label-smoothing", str(eps), "--logit-scale", str(s), "--z-loss", str(lam),
                       "--out-loss", paths["ol"],
                       "--out-grad", paths["og"], "--json"] + (["--cpu"] if cpu else []) \
                    + (["--weights", paths["w"]] if weighted else []) \
                    + (["--smoothing-convention", "pytorch"] if pytorch else [])
                out = subprocess.run(cmd, capture_output=True, text=True)
                conv = " pytorch-smoothing" if pytorch else ""
                what = (f"round {r}: N={n} C={c} tau={tau} {reduction} eps={eps} s={s} z-loss={lam}"
                        f"{' weighted' if weighted else ''}{conv} cpu={cpu}")
                if out.returncode != 0:
                    print(f"FAIL {what}: exit {out.returncode}: {out.stderr.strip()}")
                    failures += 1
                    checks += 1
                    continue
                got = json.loads(out.stdout)
                rows = np.load(paths["ol"])
                grad = np.load(paths["og"])
                ok = rows.shape == (n,) and grad.shape == (n, c) and rows.dtype == np.float32
                # f32 rounding of z = s (f + b), |z| <= max_z, carries into
                # LSE and every p_c (a few ulps of max_z).
                max_z = s * (np.abs(f).max() + np.abs(tau * log_prior).max()) if f.size else 0.0
                ztol = 4e-7 * max_z * (1 + 2 * lam * max_z)
                if want_loss is None:
                    ok &= got["loss"] is None
                else:
                    ok &= abs(got["loss"] - want_loss) <= 1e-5 * max(1.0, abs(want_loss)) + ztol
                ok &= bool(np.all(np.abs(rows - want_rows) <= 1e-5 * np.maximum(1.0, np.abs(want_rows)) + ztol))
                gmax = np.abs(want_grad).max() if want_grad.size else 0.0
                gtol = 1e-6 + 1e-5 * gmax + 4e-7 * max_z * gmax
                ok &= bool(np.all(np.abs(grad - want_grad) <= gtol))
                status = "ok  " if ok else "FAIL"
                print(f"{status} {what} on {got['adapter']} ({got['backend']}): loss {got['loss']} vs {want_loss}")
                failures += not ok
                checks += 1
        for r in range(rounds // 2):
            bad = check_posthoc(tool, rng, d, r)
            failures += bad
            checks += 2
    print(f"{checks - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
