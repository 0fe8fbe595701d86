#!/usr/bin/env python3
"""atheris harness of the varstore fuzz target (fuzz_targets.py); run: fuzz/run.py --target varstore."""

from harness import main

if __name__ == "__main__":
    main("varstore")
