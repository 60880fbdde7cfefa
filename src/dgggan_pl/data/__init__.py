"""Data: MATLAB-compatible bicubic, robust image I/O, DIV2K sub-images, datasets and the DataModule."""
