"""Training machinery: loss, checkpoints, feature cache, sharding and logging helpers."""
