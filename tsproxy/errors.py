class TsproxyError(Exception):
    """An expected failure: printed as one `tsproxy: MESSAGE` line, exit status 1."""
