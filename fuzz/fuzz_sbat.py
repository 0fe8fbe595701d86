#!/usr/bin/env python3
"""atheris harness of the sbat fuzz target (fuzz_targets.py); run: fuzz/run.py --target sbat."""

from harness import main

if __name__ == "__main__":
    main("sbat")
