"""Running workers under a cluster engine that places and restarts them (Ray)."""
