"""Files: per-video HDF5, chunked frame I/O, CSV tables, JSON-lines records, frame decoding."""
