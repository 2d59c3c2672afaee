"""Scoring a trained model: representation functions, metric and task scoring, metrics as a library."""
