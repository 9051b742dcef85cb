"""Who may touch what: scopes, the scoped view of an engine, sessions and revocations."""
