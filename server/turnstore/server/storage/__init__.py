"""The storage-engine interface and what both engines share.

The engines themselves are in ``lmdb`` and ``postgres``.
"""
