"""Face finding and cropping machinery of the crop stage."""
