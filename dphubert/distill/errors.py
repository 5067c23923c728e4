"""Errors of the distillation package: each message is one line naming the file/value at fault and the fix."""


class DistillError(ValueError):
    """Base class: the CLIs print the message without a traceback and exit with status 1."""


class DistillConfigError(DistillError):
    """An unknown key, an ill-typed value or an inconsistent setting in a training config."""


class SparsityError(DistillError):
    """A target sparsity the student cannot reach."""


class TeacherMismatchError(DistillError):
    """Teacher, student, projections or dumped teacher features disagree in shape."""


class NonFiniteLossError(DistillError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


class ResumeError(DistillError):
    """An experiment directory that cannot be started or resumed as asked."""
