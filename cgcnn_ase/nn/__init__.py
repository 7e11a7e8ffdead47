"""Pure torch: the CGCNN network and its operators (gather/scatter, segment mean, weighted
batch norm). Tensors in, tensors out; no files, no structures. Imports :mod:`cgcnn_ase.graph`
only for the :class:`~cgcnn_ase.graph.batch.GraphBatch` it consumes."""
