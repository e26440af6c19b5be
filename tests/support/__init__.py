"""Helpers the tests share: generated TLC files, local S3 and fake Kubernetes/KFP APIs, schemas, fixtures."""
