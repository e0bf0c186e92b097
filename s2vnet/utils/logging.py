"""Logging set-up for the command-line tools (the library itself only creates loggers)."""
import logging
import sys


def setup_cli_logging(level: int = logging.INFO) -> None:
    """One line per record on stderr: time, level, logger, message. Idempotent."""
    root = logging.getLogger()
    root.setLevel(level)  # also when the handler exists: a host program (or pytest) may have changed it
    if any(getattr(handler, "_s2vnet", False) for handler in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s", "%H:%M:%S"))
    handler._s2vnet = True
    root.addHandler(handler)
