"""Scoring candidates and the champion on the same trips, the gate, and the HTML evaluation report."""
