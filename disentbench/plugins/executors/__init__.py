"""Built-in executors: local, multiprocess, ray and slurm."""
