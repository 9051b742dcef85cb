"""The PostgreSQL storage engine: the StorageEngine calls on a database shared by a fleet."""
