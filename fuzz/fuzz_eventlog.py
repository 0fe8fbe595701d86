#!/usr/bin/env python3
"""atheris harness of the eventlog fuzz target (fuzz_targets.py); run: fuzz/run.py --target eventlog."""

from harness import main

if __name__ == "__main__":
    main("eventlog")
