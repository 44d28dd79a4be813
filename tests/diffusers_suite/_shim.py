"""What diffusers' own test helpers give the vendored files (rdiff's code, not upstream's).

`tests/others/test_utils.py` and `tests/testing_utils.py` of diffusers are large and pull in
optional packages; the scheduler tests use five names from them.
"""

import io
import logging
import os
import unittest

TOKEN = os.environ.get("HF_TOKEN", "")
USER = "__DUMMY_TRANSFORMERS_USER__"
torch_device = "cpu"


def is_staging_test(test_case):
    """The Hub push tests run against huggingface.co's staging server only (as upstream,
    where they are skipped unless HUGGINGFACE_CO_STAGING is set); rdiff's CI has no network."""
    return unittest.skip("needs the Hugging Face staging server")(test_case)


class CaptureLogger:
    """Captures what a `logging` logger writes, in `.out` (diffusers' helper's interface)."""

    def __init__(self, logger):
        self.logger = logger
        self.io = io.StringIO()
        self.handler = logging.StreamHandler(self.io)
        self.out = ""

    def __enter__(self):
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.out = self.io.getvalue()
