"""Extracts UCR/UEA time-series classification sets from the `aeon` wheel on PyPI into the
git-ignored `data/extra/` (nothing is downloaded at run time; the wheel comes through pip).

    python reference/extract_ucr.py [NAME ...]      # default: GunPoint ArrowHead OSULeaf ACSF1

It runs `pip download --no-deps aeon==1.6.0` into a temporary folder and copies
`aeon/datasets/data/NAME/NAME_{TRAIN,TEST}.ts` out of the wheel (a zip file).
"""

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["GunPoint", "ArrowHead", "OSULeaf", "ACSF1"]


def main():
    names = sys.argv[1:] or DEFAULT
    out = ROOT / "data" / "extra"
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "aeon==1.6.0", "-d", d],
                       check=True)
        wheel = next(Path(d).glob("aeon-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for name in names:
                for split in ("TRAIN", "TEST"):
                    member = f"aeon/datasets/data/{name}/{name}_{split}.ts"
                    target = out / name / f"{name}_{split}.ts"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(member))
                    print(target.relative_to(ROOT))


if __name__ == "__main__":
    main()
