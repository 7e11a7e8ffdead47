"""Prediction: :class:`~cgcnn_ase.inference.predictor.CGCNNPredictor` (structures in, values
with units out, in batches) and streaming to CSV/Parquet for millions of inputs."""
