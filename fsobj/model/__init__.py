"""The pure data model: canonical encoding, version headers, partitions.

Nothing in this package does I/O; everything here is covered by the test
vectors in ``tests/vectors/`` and specified in ``docs/format.md``.
"""
