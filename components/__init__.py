"""Pipeline steps for NYC taxi trip duration: pure domain modules plus thin KFP components."""

__version__ = "0.1.0"
