#!/usr/bin/env python3
"""atheris harness of the siglist fuzz target (fuzz_targets.py); run: fuzz/run.py --target siglist."""

from harness import main

if __name__ == "__main__":
    main("siglist")
