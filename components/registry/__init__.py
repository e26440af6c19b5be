"""MLflow as the system of record: tracking runs, registering versions with aliases, the S3 model store."""
