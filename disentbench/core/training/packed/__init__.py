"""Packed training: P runs of one model class as one batched computation, and its formulations."""
