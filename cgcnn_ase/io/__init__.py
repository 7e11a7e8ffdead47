"""Inputs -> structure records: the one reader every entry point uses.

A :class:`~cgcnn_ase.io.records.StructureRecord` is a validated periodic crystal (atomic numbers,
fractional coordinates, cell in Å). :mod:`cgcnn_ase.io.reader` turns any input a user holds (a
file path, CIF text, a pymatgen structure dict, ``ase.Atoms``, pymatgen ``Structure``) into
records (CIFs through :mod:`cgcnn_ase.io.cif`); :mod:`cgcnn_ase.io.inputs` expands directories, globs, tables and databases lazily.
This layer imports only :mod:`cgcnn_ase.errors`.
"""
