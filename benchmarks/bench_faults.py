"""``make bench-smoke`` entry for the fault-injection suite: ``benchmarks/faults.py`` with the same flags
(``--smoke``, ``--workdir DIR``). The suite itself, and what it checks: :mod:`faults`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
