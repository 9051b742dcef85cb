"""The embedded LMDB storage engine."""
