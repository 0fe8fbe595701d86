#!/usr/bin/env python3
"""atheris harness of the gce fuzz target (fuzz_targets.py); run: fuzz/run.py --target gce."""

from harness import main

if __name__ == "__main__":
    main("gce")
