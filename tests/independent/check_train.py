#!/usr/bin/env python3
"""`logit-adjust train` on real long-tailed data it has never seen, against a
well-known library: scikit-learn's digits (8x8 images, 10 classes; shipped
with scikit-learn, no download), made long-tailed with the exponential
profile (rho = 100, or $RHO) on a random half, the other half balanced for testing.
Checks that --loss logit-adjusted cuts --loss ce's balanced error by at
least a fifth and is no worse than scikit-learn's class-weighted logistic
regression plus two points; then post-hoc-corrects the plain cross-entropy
model's test logits with `logit-adjust posthoc` and checks its balanced
errors against numpy and scikit-learn to 1e-9, and that its best tau beats
the uncorrected model.

Usage: python3 tests/independent/check_train.py [path/to/logit-adjust]
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_early_stop import long_tailed_digits  # noqa: E402


def main():
    tool = sys.argv[1] if len(sys.argv) > 1 else "target/release/logit-adjust"
    seed = int(os.environ.get("SEED", int.from_bytes(os.urandom(4), "little")))
    rng = np.random.default_rng(seed)
    # The long-tailed training half and the balanced test half, as
    # check_early_stop.py draws them.
    x, y, keep, test, _, c = long_tailed_digits(rng)
    print(f"seed {seed}: {len(keep)} long-tailed training rows, counts {np.bincount(y[keep], minlength=c).tolist()}, {len(test)} balanced test rows")

    scaler = StandardScaler().fit(x[keep])
    ref = LogisticRegression(class_weight="balanced", max_iter=5000).fit(scaler.transform(x[keep]), y[keep])
    ref_err = 1 - balanced_accuracy_score(y[test], ref.predict(scaler.transform(x[test])))

    with tempfile.TemporaryDirectory() as d:
        paths = {k: os.path.join(d, k + ".npy") for k in ["x", "y", "xt", "yt"]}
        np.save(paths["x"], x[keep])
        np.save(paths["y"], y[keep].astype(np.int64))
        np.save(paths["xt"], x[test])
        np.save(paths["yt"], y[test].astype(np.int64))
        errs = {}
        paths["logits"] = os.path.join(d, "ce_logits.npy")
        for loss in ["ce", "logit-adjusted"]:
            out = subprocess.run([tool, "train", "--train-features", paths["x"], "--train-labels", paths["y"],
                                  "--test-features", paths["xt"], "--test-labels", paths["yt"], "--loss", loss,
                                  "--seed", "1", "--json"] + (["--out-logits", paths["logits"]] if loss == "ce" else []),
                                 capture_output=True, text=True)
            if out.returncode != 0:
                print(f"FAIL train --loss {loss}: {out.stderr.strip()}")
                print("0 passed, 1 failed")
                sys.exit(1)
            errs[loss] = json.loads(out.stdout)["balanced_error"]
        # Post-hoc correction of the cross-entropy model's logits.
        taus = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
        out = subprocess.run([tool, "posthoc", "--logits", paths["logits"], "--labels", paths["yt"],
                              "--train-labels", paths["y"], "--taus", ",".join(map(str, taus)), "--json"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"FAIL posthoc: {out.stderr.strip()}")
            print("0 passed, 1 failed")
            sys.exit(1)
        post = json.loads(out.stdout)
        logits = np.load(paths["logits"])
        counts = np.bincount(y[keep], minlength=c).astype(np.float64)
        log_prior = np.log(counts / counts.sum())
        worst_diff = 0.0
        for r, tau in zip(post["results"], taus):
            pred = (logits - (tau * log_prior).astype(np.float32)).argmax(axis=1)
            want = 1 - balanced_accuracy_score(y[test], pred)
            worst_diff = max(worst_diff, abs(r["balanced_error"] - want))
        best = min(post["results"], key=lambda r: r["balanced_error"])
        ok_post = worst_diff <= 1e-9
        ok_best = best["balanced_error"] < post["results"][0]["balanced_error"]
    ok_fifth = errs["logit-adjusted"] <= 0.8 * errs["ce"]
    ok_ref = errs["logit-adjusted"] <= ref_err + 0.02
    print(f"balanced error: ce {errs['ce']:.4f}, logit-adjusted {errs['logit-adjusted']:.4f}, "
          f"scikit-learn class-weighted logistic regression {ref_err:.4f}")
    print(f"{'ok  ' if ok_fifth else 'FAIL'} logit-adjusted <= 0.8 x ce")
    print(f"{'ok  ' if ok_ref else 'FAIL'} logit-adjusted <= scikit-learn + 0.02")
    print(f"{'ok  ' if ok_post else 'FAIL'} posthoc balanced errors equal scikit-learn's to {worst_diff:.1e} (<= 1e-9)")
    print(f"{'ok  ' if ok_best else 'FAIL'} best tau {best['tau']} lowers the balanced error from "
          f"{post['results'][0]['balanced_error']:.4f} to {best['balanced_error']:.4f}")
    failed = (not ok_fifth) + (not ok_ref) + (not ok_post) + (not ok_best)
    print(f"{4 - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
