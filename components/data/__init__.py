"""TLC trip records in: find a month's file (folder, s3://, the TLC site), normalise its schema, clean it."""
