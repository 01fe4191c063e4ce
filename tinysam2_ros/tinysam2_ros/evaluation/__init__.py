"""Video object segmentation evaluation: DAVIS-style J&F metrics and dataset I/O."""
