"""Models on disk and the one way to load them.

Model folders (``model.json`` + weights + element table, single or ensemble), the authors'
legacy ``.pth.tar`` checkpoints, the registry of shipped models, the applicability-domain
summary and model-card formatting. :func:`cgcnn_ase.models.registry.load_model` resolves a
name, alias, folder or ``.pth.tar`` file and a device for every entry point.
"""
