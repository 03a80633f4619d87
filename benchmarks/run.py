"""Run the benchmarks from this folder: `python benchmarks/run.py [--full] [--device cuda]`.

Same as `wavenet bench`; see README.md in this folder for what is measured and how.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wavenet.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
