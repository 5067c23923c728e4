"""The one exception type of dphubert.superb: its message is a single line naming the problem and the fix."""


class SuperbError(RuntimeError):
    """Bad SUPERB input (unknown task, missing corpus path, unusable model file, failed s3prl run)."""
