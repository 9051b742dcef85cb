"""The PostgreSQL storage engine, for a fleet of daemons on one database."""
