"""The known scene of the plugin tests: its bands and where its footprints are (a module of its own: both
conftest.py files are named ``conftest``)."""

# Six default model bands (blue, green, red, NIR, SWIR1, SWIR2) as Sentinel-2 names and centre wavelengths.
MODEL_BANDS = [("B02", 490.0), ("B03", 560.0), ("B04", 665.0), ("B08", 842.0), ("B11", 1610.0), ("B12", 2190.0)]
PIXEL_M = 10.0
# Valid-data blocks of the known scene (row slice, column slice); everything else is nodata.
BLOCKS = [(slice(8, 38), slice(8, 48)), (slice(60, 80), slice(60, 80))]  # 1200 px = 12 ha, 400 px = 4 ha
BLOCK_AREAS_HA = [12.0, 4.0]
