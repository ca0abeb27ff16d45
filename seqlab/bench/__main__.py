"""``python -m seqlab.bench ...`` == ``seqlab bench ...``."""

import sys

from seqlab.bench.harness import cli_main

if __name__ == "__main__":
    raise SystemExit(cli_main(sys.argv[1:]))
