"""Moving bytes safely: s3:// locations and connections, verified transfers, checksums, atomic writes."""
