"""The domain library: data, features, models, evaluation, registry and storage, one room each.

Pure functions and small classes with no knowledge of KFP or serving; the rooms
import only downward, storage <- features <- models <- data, evaluation <- registry
(tests/test_layers.py checks it).
"""

__version__ = "0.1.0"
