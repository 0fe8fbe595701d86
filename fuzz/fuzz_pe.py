#!/usr/bin/env python3
"""atheris harness of the pe fuzz target (fuzz_targets.py); run: fuzz/run.py --target pe."""

from harness import main

if __name__ == "__main__":
    main("pe")
