#!/usr/bin/env python3
"""atheris harness of the evidence fuzz target (fuzz_targets.py); run: fuzz/run.py --target evidence."""

from harness import main

if __name__ == "__main__":
    main("evidence")
