"""The ground-truth dataset interface and prepared (memory-mapped) caches."""
