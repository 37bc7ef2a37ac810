"""Extracts real series for forecasting from the `statsmodels` wheel on PyPI into the
git-ignored `data/extra/` (nothing is downloaded at run time; the wheel comes through pip).

    python reference/extract_series.py      # data/extra/sunspots.csv (yearly, 1700-2008)

It runs `pip download --no-deps statsmodels==0.15.0` into a temporary folder and copies
`statsmodels/datasets/sunspots/sunspots.csv` (columns YEAR, SUNACTIVITY) out of the wheel.
"""

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETS = {"sunspots.csv": "statsmodels/datasets/sunspots/sunspots.csv"}


def main():
    out = ROOT / "data" / "extra"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        "statsmodels==0.15.0", "-d", d], check=True)
        wheel = next(Path(d).glob("statsmodels-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for name, member in SETS.items():
                (out / name).write_bytes(z.read(member))
                print((out / name).relative_to(ROOT))


if __name__ == "__main__":
    main()
