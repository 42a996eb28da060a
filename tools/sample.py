#!/usr/bin/env python3
"""Continue a novel from a prompt; see gpt_novel/generate.py."""

import sys

from gpt_novel.generate import main

if __name__ == "__main__":
    sys.exit(main())
