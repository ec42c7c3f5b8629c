"""MEGC F1: interval matching, selection protocols, reports."""
