"""Study configs: the pydantic schema, how problems are worded, config files, the run grid."""
