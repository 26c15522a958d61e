"""Training: batches and augmentation, schedules, callbacks, the loop, distribution, backups."""
