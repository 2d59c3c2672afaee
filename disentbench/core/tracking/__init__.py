"""MLflow: the tracker (explicit client, run ids, claims) and local SQLite store recovery."""
