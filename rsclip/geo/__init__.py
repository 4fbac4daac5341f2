"""Geometry and pixels: rasters opened safely, windows and grids, images, true WGS84 footprints, dates."""
