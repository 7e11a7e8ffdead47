"""``python -m cgcnn_ase ...`` runs the ``cgcnn-ase`` command line (for environments without the script)."""

from cgcnn_ase.cli import main

if __name__ == "__main__":
    main()
