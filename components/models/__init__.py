"""The candidate models, the one model file format, safe estimator codecs, and fitting a candidate."""
