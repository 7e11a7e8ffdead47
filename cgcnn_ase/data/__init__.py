"""Labelled datasets: tables of structures with targets (csv/json, CIF folders, ASE files), their
row selection and target transforms, and train/validation/test splits. Training and evaluation both
read data through here; structures themselves are read by the one reader in :mod:`cgcnn_ase.io`.
Imports :mod:`cgcnn_ase.io` and :mod:`cgcnn_ase.errors` only."""
