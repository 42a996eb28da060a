#!/usr/bin/env python3
"""ZeRO checkpoint → Hugging Face folder; see gpt_novel/consolidate.py."""

import sys

from gpt_novel.consolidate import main

if __name__ == "__main__":
    sys.exit(main())
