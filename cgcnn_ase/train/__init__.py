"""Training: configuration, datasets and splits, the graph cache, the
:class:`~cgcnn_ase.train.trainer.Trainer`, data-parallel runs, model-folder export, ensembles and
fine-tuning from a trained model (:mod:`cgcnn_ase.train.finetune`)."""
