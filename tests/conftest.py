import os
import sys

# Tests that need several devices run in subprocesses with XLA_FLAGS set; the main process keeps one.
sys.path.insert(0, os.path.dirname(__file__))
