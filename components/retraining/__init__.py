"""When to retrain: the retraining policy and its one decision, with the reason for it."""
