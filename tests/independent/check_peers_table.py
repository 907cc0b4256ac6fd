"""The real-GPU run's table (`scripts/peers.py --table`, which
`scripts/gpu-run.sh` prints) reads the rows `bench --json` writes today:
run on a CPU adapter with a stand-in for the PyTorch figures, it prints a
line per row, compares only the f32 rows with the peers (which run f32),
and names the half rows by their format.

    python3 tests/independent/check_peers_table.py target/debug/logit-adjust
"""

import json
import os
import subprocess
import sys
import tempfile


def main():
    binary = sys.argv[1]
    bench = subprocess.run(
        [binary, "bench", "--quick", "--classes", "10", "--json", "--reps", "3"],
        check=True, capture_output=True, text=True,
    ).stdout
    rows = json.loads(bench)["rows"]
    (n, c) = (rows[0]["n"], rows[0]["c"])
    peers = {"device": "stand-in", "torch": "-", "timing": "-",
             "rows": [{"n": n, "c": c, "eager_ms": 3.0, "compile_ms": 2.0, "liger_ms": 1.0,
                       "eager_posthoc16_ms": 5.0}]}
    with tempfile.TemporaryDirectory() as d:
        paths = [os.path.join(d, "bench.json"), os.path.join(d, "peers.json")]
        for path, text in zip(paths, [bench, json.dumps(peers)]):
            open(path, "w").write(text)
        out = subprocess.run(
            [sys.executable, "scripts/peers.py", "--table", *paths],
            check=True, capture_output=True, text=True,
        ).stdout
    lines = [l.split() for l in out.splitlines()[3:]]
    assert len(lines) == len(rows), out
    by_op = {l[0]: l for l in lines}
    fused = by_op["fused"]
    assert fused[-1] != "-" and float(fused[7]) == 3.0, out  # beside eager, compile, Liger
    for half in ["fused/f16", "fused/bf16"]:
        assert by_op[half][-1] == "-" and by_op[half][7] == "-", out  # ours alone
    print(f"peers.py --table: {len(lines)} rows, f32 beside the peers, halves alone")


if __name__ == "__main__":
    main()
