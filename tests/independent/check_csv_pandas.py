"""`bench --csv` and `check --csv` load in pandas as they are: one row per
measurement, numeric columns numeric, every row carrying its build, adapter
and timestamp.

    python3 tests/independent/check_csv_pandas.py target/debug/logit-adjust
"""

import io
import subprocess
import sys

import pandas as pd


def csv_of(binary, *args):
    out = subprocess.run([binary, *args], check=True, capture_output=True, text=True)
    return pd.read_csv(io.StringIO(out.stdout))


def main():
    binary = sys.argv[1]
    bench = csv_of(binary, "bench", "--quick", "--classes", "10", "--csv", "--reps", "3")
    assert len(bench) >= 4, bench
    for col in ["p20_ms", "p50_ms", "p80_ms", "bytes", "gb_per_s", "max_err"]:
        assert pd.api.types.is_numeric_dtype(bench[col]), (col, bench[col].dtype)
    assert (bench["p20_ms"] <= bench["p50_ms"]).all() and (bench["p50_ms"] <= bench["p80_ms"]).all()
    assert bench["timestamp"].str.endswith("Z").all()
    assert bench[["version", "git_commit", "adapter", "driver", "dtype", "mode"]].notna().all().all()
    assert set(bench["mode"]) <= {"full", "forward", "backward"}, set(bench["mode"])
    print(f"bench --csv: {len(bench)} rows x {len(bench.columns)} columns")

    check = csv_of(binary, "check", "--quick", "--csv", "--runs", "1", "--adapter", "0")
    assert len(check) == 336, len(check)  # 7 ops x 3 dtypes x 2 kernel sets x 8 shape classes
    for col in ["max_abs_err", "max_rel_err", "time_us", "bandwidth_gb_s", "rows", "classes"]:
        assert pd.api.types.is_numeric_dtype(check[col]), (col, check[col].dtype)
    supported = check[check["supported"]]
    assert supported["passed"].all(), supported[~supported["passed"]][["op_params", "error_message"]]
    assert (~check["supported"] & check["passed"]).sum() == 0
    print(
        f"check --csv: {len(check)} rows, {len(supported)} supported, all passed; "
        f"{(~check['supported']).sum()} unsupported"
    )


if __name__ == "__main__":
    main()
