"""Judging a canary on live evidence: its policy, the paired accuracy test, the checks, the verdict."""
