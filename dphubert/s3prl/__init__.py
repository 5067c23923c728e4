"""s3prl integration for dphubert.

- ``dphubert.s3prl.compat``: call ``compat.apply()`` before importing s3prl so its
  code runs on torchaudio >= 2.9 (which removed several APIs s3prl still calls).

Submodules are imported explicitly; this package imports nothing heavy on its own.
"""
