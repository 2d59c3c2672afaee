"""Running a study: orchestration (run), the executor contract (jobs), the worker and its typed context,
packing, recording, re-scoring and run locks."""
