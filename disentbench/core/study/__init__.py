"""Running a study: orchestration, the worker, packing, recording, re-scoring, run locks."""
