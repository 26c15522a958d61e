"""What a run's numbers say: test-set metrics and every PNG chart."""
