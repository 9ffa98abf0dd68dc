"""The demo, the embedded MongoDB and the sample corpus; never imported by production code."""
