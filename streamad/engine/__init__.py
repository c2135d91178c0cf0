"""The one engine every job runs on: threads and queues (runner), iterator stages, their assembly, the fitter, training, Ray."""
