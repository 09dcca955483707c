"""The FUSE face of the store: mount a store as a filesystem (docs/mount.md).

The only package that imports pyfuse3, and only in ``ops`` (the adapter) and
``daemon`` (the process). Layers, each depending only on those below it:

- ``tree``, ``inodes``, ``staging``, ``xattrs`` — pure: how sort keys become
  paths, inode numbers and lookup counts, dirty extents, attribute names;
- ``reader``, ``openfile``, ``work``, ``committer`` — payload reads, open-file
  state, the store work of one operation (run in a worker thread), group commit;
- ``state``, ``lookup``, ``files``, ``meta``, ``names`` → ``filesystem`` — the
  operations, on trio, in terms of inodes and names; no pyfuse3;
- ``ops`` — translates pyfuse3 requests to ``Filesystem`` calls;
- ``daemon`` — options, logging, daemonizing, signals, the trio main loop.
"""
