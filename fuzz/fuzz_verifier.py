#!/usr/bin/env python3
"""atheris harness of the verifier fuzz target (fuzz_targets.py); run: fuzz/run.py --target verifier."""

from harness import main

if __name__ == "__main__":
    main("verifier")
