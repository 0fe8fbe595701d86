#!/usr/bin/env python3
"""atheris harness of the tpm fuzz target (fuzz_targets.py); run: fuzz/run.py --target tpm."""

from harness import main

if __name__ == "__main__":
    main("tpm")
