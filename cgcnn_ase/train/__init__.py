"""Training: configuration, datasets and splits, the graph cache, the
:class:`~cgcnn_ase.train.trainer.Trainer`, data-parallel runs, model-folder export and ensembles."""
