"""Records -> crystal graphs: graph settings and neighbor policies, neighbor search, batching
(collate), element feature tables. Imports :mod:`cgcnn_ase.io` and :mod:`cgcnn_ase.errors` only."""
