"""The embedded LMDB storage engine: :class:`.engine.LmdbEngine` and the parts it is built from."""
