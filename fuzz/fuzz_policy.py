#!/usr/bin/env python3
"""atheris harness of the policy fuzz target (fuzz_targets.py); run: fuzz/run.py --target policy."""

from harness import main

if __name__ == "__main__":
    main("policy")
