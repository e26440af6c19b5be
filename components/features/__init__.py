"""The one definition of the model's features (trip_features) and their encoding (vectorizer, matrices)."""
