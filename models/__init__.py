"""Networks used by m2es: Inception I3D feature extractor and IAENet spotter."""
