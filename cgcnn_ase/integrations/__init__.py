"""Thin adapters to other packages: the ASE calculator (:mod:`.ase`), the matminer featurizer
(:mod:`.matminer`) and dask clusters (:mod:`.dask`). Each converts, calls the predictor and maps
names; none holds model logic. Their third-party imports happen only when the module is imported."""
