"""Where frames come from and go to on disk: sources, decoding (the only PyAV importer), live streams, URLs, output paths."""
