"""State on disk: the array store protocol (zarr, the only zarr importer), model and score stores, writer locks."""
